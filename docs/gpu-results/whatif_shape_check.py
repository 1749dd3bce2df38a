#!/usr/bin/env python3
"""Offline check of a what-if model whose wait *shape* comes from the data
(not a uniform U(0, K·s)): Q_K(p) = Q_0(p) + K·g(p), g fitted per quantile
level by least squares through the origin on the fitted tenant counts.

    python3 whatif_shape_check.py rows-whatif.parquet [FIT=0,1,3]

K = continuous GEMM tenants = gpu_processes − 1 (the 5/s 4096² caller is a
resident process too, busy a few % of the time). Prints measured and
predicted wall p50/p99 per kernel and K, and the error.
"""
import sys
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

t = pq.read_table(sys.argv[1])
fit = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "0,1,3").split(",")]
t = t.filter(pc.equal(t["arrival"], True))
for kernel in ["fft", "gemm"]:
    r = t.filter(pc.equal(t["kernel"], kernel))
    k = np.array(r["gpu_processes"].to_pylist()) - 1
    q = np.array(r["queue_ms"].to_pylist(), dtype=float)
    w = np.array(r["wall_ms"].to_pylist(), dtype=float)
    g_ms = float(np.median(np.array(r["gpu_ms"].to_pylist(), dtype=float)))
    ps = np.array([0.5, 0.99])
    Q = {K: np.quantile(q[k == K], ps) for K in sorted(set(k.tolist()))}
    num = sum(K * (Q[K] - Q[0]) for K in fit if K > 0)
    den = sum(K * K for K in fit if K > 0)
    g = num / den
    print(f"{kernel}: fit on K={fit}, g(p50)={g[0]:.3f} ms, g(p99)={g[1]:.3f} ms per tenant")
    for K in sorted(Q):
        n = int((k == K).sum())
        meas = np.quantile(w[k == K], ps)
        pred = g_ms + Q[0] + K * g
        err = 100 * (pred - meas) / meas
        tag = "fit" if K in fit else "pred"
        print(f"  K={K} n={n} {tag:4} wall p50 {meas[0]:.3f} vs {pred[0]:.3f} ({err[0]:+.1f} %)"
              f"  p99 {meas[1]:.3f} vs {pred[1]:.3f} ({err[1]:+.1f} %)")
