import json, sys, pickle, torch, collections, importlib.util
from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.tracer import ForcedRows
from omnitrace_core.sources import build_prompt, validate_sources
sys.path.insert(0,'/work/shared/bench'); import score as S
torch.set_num_threads(1)
rows={json.loads(l)['id']:json.loads(l) for l in open('/work/shared/bench/dev.jsonl')}
data=pickle.load(open(sys.argv[1],'rb'))
tr=Tracer.from_default()
def run(cfg, shift=False):
    res=collections.defaultdict(list)  # name-> list of hits
    detail={}
    for d in data:
        row=rows[d['id']]
        srcs=validate_sources(row['sources'])
        layout=build_prompt(tr.tokenizer,srcs,row['question'],cfg.system_prompt,cfg.split_sources)
        rws=d['rows'][1:] if shift else d['rows'][:-1]
        f=ForcedRows(response=d['response'],token_ids=d['token_ids'],offsets=d['offsets'],rows=rws,reference_rows=d['reference_rows'],signal='attmean')
        ans=tr.assemble_forced(srcs,layout,f,cfg)
        pred=ans.to_prediction(row['id'])
        for s in pred['sentences']:
            ch=S.chosen_option(s['text'])
            if ch is None: continue
            mass=s.get('source_mass') or {}
            opts={o:mass.get(o,0) for o in row['options']}
            top=max(opts,key=opts.get) if any(opts.values()) else None
            cits=[c['source_id'] for c in s['citations'] if c['source_id'].startswith('option')]
            kind=d['name'].split('-')[0]
            res[kind].append(top==ch)
            res[kind+'-cit'].append(bool(cits) and cits[0]==ch)
            detail[(d['id'],d['name'])]=(ch,top,cits)
            break
    return res,detail
if __name__=='__main__':
    base=TracerConfig()
    for bc in ['both','prompt','running','none']:
        cfg=base.model_copy(update={'mapping':base.mapping.model_copy(update={'bias_correction':bc})})
        for shift in [False,True]:
            res,det=run(cfg,shift)
            print(bc,'shift' if shift else 'pred ', ' '.join(f'{k}:{sum(v)/len(v):.3f}({len(v)})' for k,v in sorted(res.items())))
