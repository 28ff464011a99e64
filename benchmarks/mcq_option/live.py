"""Run the default tracer end to end (decode-time attribution) on dev rows; write predictions."""
import json, sys, torch, time
from omnitrace_core import Tracer
from omnitrace_core.bench import answer_row
torch.set_num_threads(2)
ds, out, tasks = sys.argv[1], sys.argv[2], sys.argv[3].split(',')
rows=[json.loads(l) for l in open(ds) if l.strip()]
old={json.loads(l)['id']:json.loads(l) for l in open('benchmarks/results/eval-dev/predictions-omnitrace.jsonl')}
tr=Tracer.from_default()
same=diff=0
with open(out,'w') as fh:
    for row in rows:
        if row['task'] not in tasks: continue
        t0=time.time()
        ans=answer_row(tr,row,max_new_tokens=128)
        p=ans.to_prediction(row['id']); fh.write(json.dumps(p)+'\n'); fh.flush()
        if row['id'] in old:
            if old[row['id']]['text']==p['text']: same+=1
            else: diff+=1
        print(row['id'], f'{time.time()-t0:.1f}s', 'errors' if ans.errors else '', flush=True)
print('text same as stored', same, 'different', diff)
