"""Counterfactual option consistency on another model: forced letter answers, old vs new mapping."""
import json, sys, re, collections, torch
from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.signals import get_signal
sys.path.insert(0,'/work/shared/bench'); import score as S
torch.set_num_threads(2)
model, nrows = sys.argv[1], int(sys.argv[2])
rows=[json.loads(l) for l in open('/work/shared/bench/dev.jsonl')]
rows=[r for r in rows if r['task']=='mcq'][:nrows]
tr=Tracer.from_pretrained(model)
base=TracerConfig()
cfgs={'old':base.model_copy(update={'mapping':base.mapping.model_copy(update={'token_rows':'producing','prompt_reference':'after_sources'})}),
      'new':base,
      'reading-only':base.model_copy(update={'mapping':base.mapping.model_copy(update={'prompt_reference':'after_sources'})}),
      'header-only':base.model_copy(update={'mapping':base.mapping.model_copy(update={'token_rows':'producing'})})}
res=collections.defaultdict(list)
for row in rows:
    srcs,layout=tr._layout(row['sources'],row['question'],base)
    for o in row['options']:
        L=o[-1]
        for t,resp in (('T1',f'The answer is: Option {L}.'),('T2',f'The answer is {L}.')):
            forced=tr.forced_rows(layout,resp,get_signal('attmean'))
            for name,cfg in cfgs.items():
                p=tr.assemble_forced(srcs,layout,forced,cfg).to_prediction(row['id'])
                s=p['sentences'][0]; m=s['source_mass']
                top=max(row['options'],key=lambda x:m.get(x,0))
                res[(name,t)].append(top==o); res[(name,'by-letter',L)].append(top==o)
    print(row['id'],flush=True)
for k,v in sorted(res.items()): print(k,f'{sum(v)/len(v):.2f}',len(v))
