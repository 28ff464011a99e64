import json, sys, pickle, torch, collections
from omnitrace_core import Tracer
from omnitrace_core.sources import build_prompt, validate_sources
from omnitrace_core.mapping import UnitIndex, reference_share, shares_of
from omnitrace_core.config import TracerConfig
rows={json.loads(l)['id']:json.loads(l) for l in open('/work/shared/bench/dev.jsonl')}
data=pickle.load(open('scratch/mcq_rows.pkl','rb'))
tr=Tracer.from_default(); cfg=TracerConfig()
acc=collections.defaultdict(list)
for d in data:
    if d['name']=='gen' or d['name'].startswith('T3'): continue
    row=rows[d['id']]; L=d['name'][-1]
    srcs=validate_sources(row['sources'])
    layout=build_prompt(tr.tokenizer,srcs,row['question'],cfg.system_prompt,cfg.split_sources)
    idx=UnitIndex(layout.units,1)
    names=[u.source_id for u in layout.units]; oi=[names.index(o) for o in row['options']]
    ref=reference_share(idx,d['reference_rows'])
    toks=[tr.tokenizer.decode([t]) for t in d['token_ids']]
    k=max(i for i,t in enumerate(toks) if t.strip()==L)
    sh=[shares_of(idx.mass(r)) for r in d['rows']]
    prev=torch.stack(sh[:k]).mean(0)
    want=row['options'].index('option'+L)
    for nm,row_ in [('pred',k),('read',k+1)]:
        s=sh[row_]
        for cn,v in [('raw',s),('/prompt',s/ref),('/prevtokens',s/prev),('/both',s/torch.sqrt(ref*prev))]:
            o=v[oi]; acc[(nm,cn)].append(int(torch.argmax(o))==want)
            acc[(nm,cn,L)].append(int(torch.argmax(o))==want)
for k,v in sorted(acc.items(),key=str):
    print(k, f'{sum(v)/len(v):.2f}', len(v))
