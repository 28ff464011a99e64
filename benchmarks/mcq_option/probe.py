import json, sys, torch
from omnitrace_core import Tracer
from omnitrace_core.sources import build_prompt, validate_sources
from omnitrace_core.signals import get_signal
from omnitrace_core.mapping import UnitIndex, reference_share, shares_of
torch.set_num_threads(1)
rows={json.loads(l)['id']:json.loads(l) for l in open('/work/shared/bench/dev.jsonl')}
preds={json.loads(l)['id']:json.loads(l) for l in open('benchmarks/results/eval-dev/predictions-omnitrace.jsonl')}
tr=Tracer.from_default()
ids=sys.argv[1:]
for rid in ids:
    row=rows[rid]; text=preds[rid]['text']
    cfg=tr.config
    srcs=validate_sources(row['sources'])
    layout=build_prompt(tr.tokenizer,srcs,row['question'],cfg.system_prompt,cfg.split_sources)
    forced=tr.forced_rows(layout,text,get_signal(cfg.signal))
    index=UnitIndex(layout.units,1)
    names=[u.source_id for u in layout.units]
    ref=reference_share(index,forced.reference_rows)
    print('=====',rid,repr(text[:80]))
    for u in layout.units: print('  unit',u.source_id,u.token_start,u.token_end, u.token_end-u.token_start)
    print('prompt_len',len(layout.input_ids),'ref_positions',len(layout.reference_positions))
    print('prompt ref', ' '.join(f'{n[-4:]}:{x:.3f}' for n,x in zip(names,ref.tolist())))
    for k,(tok,row_) in enumerate(zip(forced.token_ids,forced.rows)):
        if k>12: break
        m=index.mass(row_); sh=shares_of(m)
        frac=float(m.sum())/float(row_.sum())
        print(f'{tr.tokenizer.decode([tok])!r:12}', f'srcfrac={frac:.2f}', ' '.join(f'{n[-4:]}:{x:.3f}' for n,x in zip(names,sh.tolist())))
