"""Replay cached forced rows through assemble_forced under config variants; score with score.py."""
import json, sys, pickle, torch, collections, argparse
from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.tracer import ForcedRows
from omnitrace_core.sources import build_prompt, validate_sources
sys.path.insert(0,'/work/shared/bench'); import score as S
torch.set_num_threads(1)
ap=argparse.ArgumentParser(); ap.add_argument('dataset'); ap.add_argument('pkl'); ap.add_argument('--variants',default='')
ap.add_argument('--cf',action='store_true'); ap.add_argument('--dump',default=None)
a=ap.parse_args()
rows=[json.loads(l) for l in open(a.dataset)]; byid={r['id']:r for r in rows}
data=pickle.load(open(a.pkl,'rb'))
tr=Tracer.from_default()
base=TracerConfig()
REF={}
def variant(spec):
    m={}; REF.clear()
    for kv in spec.split('+'):
        if not kv: continue
        k,v=kv.split('=')
        if k=='ref': REF['tail']=int(v); continue
        m[k]=v
    return base.model_copy(update={'mapping':base.mapping.model_copy(update=m)})
layouts={}
def predict(cfg,d):
    row=byid[d['id']]
    if d.get('empty'): return {'id':row['id'],'text':'','sentences':[]}
    srcs=validate_sources(row['sources'])
    if d['id'] not in layouts: layouts[d['id']]=build_prompt(tr.tokenizer,srcs,row['question'],cfg.system_prompt,cfg.split_sources)
    f=ForcedRows(response=d['response'],token_ids=d['token_ids'],offsets=d['offsets'],rows=d['rows'][:-1],
                 reference_rows=d['reference_rows'][-REF['tail']:] if REF else d['reference_rows'],signal='attmean',next_row=d['rows'][-1],reference_at=None if REF else layouts[d['id']].reference_positions)
    return tr.assemble_forced(srcs,layouts[d['id']],f,cfg).to_prediction(row['id'])
for spec in a.variants.split(','):
    cfg=variant(spec)
    if a.cf:
        by=collections.defaultdict(list)
        for d in data:
            p=predict(cfg,d); row=byid[d['id']]
            for s in p['sentences']:
                ch=S.chosen_option(s['text'])
                if ch is None: continue
                mass=s.get('source_mass') or {}
                opts={o:mass.get(o,0) for o in row['options']}
                top=max(opts,key=opts.get) if any(opts.values()) else None
                cits=[c['source_id'] for c in s['citations'] if c['source_id'].startswith('option')]
                t=d['name'].split('-')[0]
                by[t].append(top==ch); by[t+'-cit'].append(bool(cits) and cits[0]==ch)
                if t!='gen': by[d['name'][:2]+'/'+d['name'][-1]].append(top==ch)
                break
        print(f'{spec:45s}', ' '.join(f'{k}:{sum(v)/len(v):.2f}' for k,v in sorted(by.items())),flush=True)
        continue
    preds={}
    for d in data:
        if d['name']!='gen': continue
        preds[d['id']]=predict(cfg,d)
    if a.dump: 
        with open(a.dump.replace('SPEC',spec.replace('=','-').replace('+','_') or 'default'),'w') as fh:
            for p in preds.values(): fh.write(json.dumps(p)+'\n')
    allm=S.score(rows,preds)
    out=f"{spec or 'default':45s} all F1 {allm['sentence_f1_micro']:.3f} P {allm['sentence_precision']:.3f} R {allm['sentence_recall']:.3f} ansF1 {allm['answer_f1'] or 0:.3f} opt {allm['option_consistency'] or 0:.3f}"
    for t in sorted({r['task'] for r in rows}):
        m=S.score([r for r in rows if r['task']==t],preds)
        out+=f" | {t} {m['sentence_f1_micro']:.3f}"
    if any('kind' in g for r in rows for g in r.get('response_sentences',[])):
        out+=' | '+' '.join(f"{k[12:]} {v:.3f}" for k,v in allm.items() if k.startswith('sentence_f1_') and k not in ('sentence_f1_micro','sentence_f1_macro'))
    print(out,flush=True)
