import json, sys, pickle, torch
from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.mapping import UnitIndex, reference_share, TokenMapper
from omnitrace_core.sources import build_prompt, validate_sources
rows={json.loads(l)['id']:json.loads(l) for l in open('/work/shared/bench/dev.jsonl')}
data=pickle.load(open('scratch/mcq_rows.pkl','rb'))
tr=Tracer.from_default(); base=TracerConfig()
want=[(a.split(':')[0],a.split(':')[1]) for a in sys.argv[1].split(',')]
specs=sys.argv[2].split(',')
for d in data:
    if (d['id'],d['name']) not in want: continue
    row=rows[d['id']]; srcs=validate_sources(row['sources'])
    lay=build_prompt(tr.tokenizer,srcs,row['question'],base.system_prompt)
    idx=UnitIndex(lay.units,1); names=[u.source_id[-4:] for u in lay.units]
    ref=reference_share(idx,d['reference_rows'])
    print('====',d['id'],d['name'],repr(d['response']))
    print('prompt ref  ', ' '.join(f'{n}:{x:.3f}' for n,x in zip(names,ref.tolist())))
    for spec in specs:
        k,v=zip(*[kv.split('=') for kv in spec.split('+')])
        cfg=base.mapping.model_copy(update=dict(zip(k,v)))
        mp=TokenMapper(idx,cfg,ref); print(' --',spec)
        n=len(d['token_ids'])
        for i,t in enumerate(d['token_ids']):
            m=mp.map(d['rows'][i], d['rows'][i+1])
            print(f'   {tr.tokenizer.decode([t])!r:10}', ' '.join(f'{nm}:{x:.2f}' for nm,x in zip(names,m.shares)), 'raw', ' '.join(f'{x:.2f}' for x in m.raw_shares))
