import json, sys, pickle, torch, collections
from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.mapping import UnitIndex, reference_share, shares_of
from omnitrace_core.sources import build_prompt, validate_sources
ds=sys.argv[2]
rows={json.loads(l)['id']:json.loads(l) for l in open(ds)}
data=[d for d in pickle.load(open(sys.argv[1],'rb')) if d['name']=='gen' and not d.get('empty')]
tr=Tracer.from_default(); base=TracerConfig()
# per unit position-from-end: mean log(resp/ref)
stats=collections.defaultdict(lambda: collections.defaultdict(list))
for d in data:
    row=rows[d['id']]; srcs=validate_sources(row['sources'])
    lay=build_prompt(tr.tokenizer,srcs,row['question'],base.system_prompt)
    idx=UnitIndex(lay.units,1); U=len(lay.units)
    resp=torch.stack([shares_of(idx.mass(r)) for r in d['rows'][:-1]]).mean(0)
    R=d['reference_rows']
    refs={'all':reference_share(idx,R)}
    for k in (1,3,5,6,10): refs[f'tail{k}']=reference_share(idx,R[-k:])
    refs['skipq']=reference_share(idx,R[len(R)//2:])
    for name,ref in refs.items():
        lr=torch.log(resp.clamp_min(1e-6)/ref.clamp_min(1e-6))
        lr=lr-lr.mean()
        for u in range(U):
            key='last' if u==U-1 else ('first' if u==0 else 'mid')
            stats[name][key].append(float(lr[u]))
        stats[name]['abs'].append(float(lr.abs().mean()))
for name,s in stats.items():
    print(f'{name:7s}', ' '.join(f'{k}:{sum(v)/len(v):+.3f}' for k,v in s.items()))
