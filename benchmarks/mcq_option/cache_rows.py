"""Cache teacher-forced attention rows (n+1 rows: predicting rows + the last token's reading row)
for mcq rows: the generated response and counterfactual responses naming each letter."""
import json, sys, torch, pickle, re
from omnitrace_core import Tracer
from omnitrace_core.sources import build_prompt, validate_sources
from omnitrace_core.signals import get_signal
from omnitrace_core.capture import CaptureSession, capturing
torch.set_num_threads(2)
DS=sys.argv[4] if len(sys.argv)>4 else '/work/shared/bench/dev.jsonl'
rows=[json.loads(l) for l in open(DS)]
import os
preds={json.loads(l)['id']:json.loads(l) for l in open('benchmarks/results/eval-dev/predictions-omnitrace.jsonl')}
tasks=sys.argv[2].split(',')
tr=Tracer.from_default()
cfg=tr.config; signal=get_signal(cfg.signal)
out=[]
def templates(row):
    res=[]
    for o in row['options']:
        L=o[-1]
        txt=next(s['text'] for s in row['sources'] if s['id']==o)
        val=re.sub(r'^\([A-D]\)\s*','',txt).strip()
        res += [(f'T1-{L}', f'The answer is: Option {L}.'),
                (f'T2-{L}', f'The answer is {L}.'),
                (f'T3-{L}', f'The answer is ({L}) {val}.')]
    return res
for row in rows:
    if row['task'] not in tasks: continue
    srcs=validate_sources(row['sources'])
    layout=build_prompt(tr.tokenizer,srcs,row['question'],cfg.system_prompt,cfg.split_sources)
    resps=[('gen', row.get('response') or preds[row['id']]['text'])]
    if not resps[0][1].strip(): out.append(dict(id=row['id'],name='gen',response='',empty=True)); continue
    if row['task']=='mcq' and sys.argv[1]=='cf': resps+=templates(row)
    for name,resp in resps:
        if not resp.strip(): continue
        enc=tr.tokenizer(resp,add_special_tokens=False,return_offsets_mapping=True)
        ids_=list(enc['input_ids']); offs=[(int(a),int(b)) for a,b in enc['offset_mapping']]
        P=len(layout.input_ids)
        positions=list(range(P-1,P+len(ids_)))
        ids=torch.tensor([layout.input_ids+ids_])
        sess=CaptureSession(signal,tr.loaded.num_layers,prefill_positions=[*layout.reference_positions,*positions])
        with capturing(sess), torch.no_grad():
            tr.model(input_ids=ids,attention_mask=torch.ones_like(ids),use_cache=False)
        out.append(dict(id=row['id'],name=name,response=resp,token_ids=ids_,offsets=offs,
            rows=[sess.rows[p].cpu() for p in positions],
            reference_rows=[sess.rows[p].cpu() for p in layout.reference_positions if p in sess.rows]))
    print(row['id'],flush=True)
pickle.dump(out,open(sys.argv[3] if len(sys.argv)>3 else 'scratch/mcq_rows.pkl','wb'))
