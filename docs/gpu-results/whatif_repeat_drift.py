#!/usr/bin/env python3
"""How much a tenant count's measured wall p50/p99 moves between its two
phases of one what-if run (the sweep 0,1,2,3,4,6,6,4,3,2,1,0 measures every
count twice, minutes apart): the floor under any model's error, since a fit
cannot know which repetition it will be checked against.

    python3 whatif_repeat_drift.py RUN_DIR...

Per run, kernel and K (= gpu_processes − 1): n, wall p50 and p99 of the
first and second phase, and (second − first)/first in %.
"""
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

print("| run | kernel | K | n1 | n2 | p50 1st | p50 2nd | Δ p50 % | p99 1st | p99 2nd | Δ p99 % |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
worst = {}
for run in sys.argv[1:]:
    t = pq.read_table(f"{run}/rows-whatif.parquet")
    t = t.filter(pc.equal(t["arrival"], True))
    ts = t["ts"].cast("int64").to_numpy() / 1e9
    ph = np.array(t["phase"].to_pylist())
    kern = np.array(t["kernel"].to_pylist())
    k = np.array(t["gpu_processes"].to_pylist()) - 1
    w = np.array(t["wall_ms"].to_pylist(), float)
    for kn in ["fft", "gemm"]:
        for K in [0, 1, 2, 3, 4, 6]:
            m = (kern == kn) & (k == K) & (ph == f"whatif tenants={K}")
            tt, ww = ts[m], w[m]
            o = np.argsort(tt)
            tt, ww = tt[o], ww[o]
            # The two phases: split at the largest gap in time.
            cut = int(np.argmax(np.diff(tt))) + 1
            a, b = ww[:cut], ww[cut:]
            qa, qb = np.quantile(a, [0.5, 0.99]), np.quantile(b, [0.5, 0.99])
            d = 100 * (qb - qa) / qa
            worst.setdefault(run, []).append((K, kn, d))
            print(f"| {run.rstrip('/').split('/')[-1]} | {kn} | {K} | {len(a)} | {len(b)} | {qa[0]:.3f} | {qb[0]:.3f} | "
                  f"{d[0]:+.1f} | {qa[1]:.3f} | {qb[1]:.3f} | {d[1]:+.1f} |")
print()
for run, v in worst.items():
    big = [x for x in v if x[0] >= 2]
    print(f"{run}: K ≥ 2, largest |Δ p50| {max(abs(x[2][0]) for x in big):.1f} %, "
          f"largest |Δ p99| {max(abs(x[2][1]) for x in big):.1f} %")
