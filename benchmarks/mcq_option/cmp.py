import json,sys
sys.path.insert(0,'/work/shared/bench'); import score as S
rows=[json.loads(l) for l in open('/work/shared/bench/dev.jsonl')]
tasks=sys.argv[1].split(',')
sel=[r for r in rows if r['task'] in tasks]
def load(p): return {json.loads(l)['id']:json.loads(l) for f in p.split('+') for l in open(f)}
for p in sys.argv[2:]:
    P=load(p)
    out=[]
    for t in ['all']+tasks:
        rs=sel if t=='all' else [r for r in sel if r['task']==t]
        m=S.score(rs,P)
        out.append(f"{t}: F1 {m['sentence_f1_micro']:.3f} P {m['sentence_precision']:.3f} R {m['sentence_recall']:.3f} n={m['labelled_sentences']}" + (f" ans {m['answer_f1']:.3f}" if m['answer_f1'] is not None else '') + (f" opt {m['option_consistency']:.3f}({m['option_rows']})" if m['option_consistency'] is not None else '') + (f" miss {m['missing_predictions']}" if m['missing_predictions'] else ''))
    print(p.split('/')[-1]); print('   '+'\n   '.join(out))
