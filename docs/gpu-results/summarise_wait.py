#!/usr/bin/env python3
"""Wall-clock tails per wait method on a contended GPU (run-cpu-profile.sh, call 1).

  summarise_wait.py DIR   (wait-<kernel>-<method>.parquet and wait-torch.jsonl)

p50/p90/p99 of wall_ms per kernel and method, with a bootstrap 95 % interval
for the p99 (1,000 resamples), and the event-clock p50 and submit values.
"""
import pyarrow.parquet as pq, json, random, sys
from collections import Counter
d=sys.argv[1] if len(sys.argv)>1 else '.'
def pct(v,p):
    v=sorted(v); i=(len(v)-1)*p; lo=int(i); hi=min(lo+1,len(v)-1); return v[lo]+(v[hi]-v[lo])*(i-lo)
def boot(v,p,n=1000):
    rnd=random.Random(7); r=sorted(pct([rnd.choice(v) for _ in v],p) for _ in range(n)); return r[25],r[975]
for k in ['fft','gemm']:
    for m in ['spin','block','poll50']:
        t=pq.read_table(f'{d}/wait-{k}-{m}.parquet',columns=['wall_ms','gpu_ms','submit']).to_pydict()
        w=t['wall_ms']; g=t['gpu_ms']
        lo,hi=boot(w,0.99)
        print(f"{k:4s} {m:6s} n={len(w)} wall p50 {pct(w,.5):.3f} p90 {pct(w,.9):.3f} p99 {pct(w,.99):.3f} [{lo:.2f},{hi:.2f}] gpu p50 {pct(g,.5):.4f} {dict(Counter(t['submit']))}")
    r=[json.loads(l) for l in open(f'{d}/wait-torch.jsonl')]
    w=[x['wall_ms'] for x in r if x['kernel']==k]
    lo,hi=boot(w,0.99)
    print(f"{k:4s} torch  n={len(w)} wall p50 {pct(w,.5):.3f} p90 {pct(w,.9):.3f} p99 {pct(w,.99):.3f} [{lo:.2f},{hi:.2f}]")
