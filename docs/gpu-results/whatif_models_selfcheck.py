#!/usr/bin/env python3
"""Self-check of whatif_models.py: a synthetic round-robin world simulated
turn by turn (not from the models' formulas), written as a run directory,
then evaluated with the same protocol. If the renewal code (residual, the
uniform number of turns ahead, the convolution of turns, the preemption
cost) is right, C4, whose family holds the world's turn distribution,
predicts K = 2, 4, 6 within a few %.

    python3 whatif_models_selfcheck.py OUT_DIR

World: K busy contexts take turns in a fixed cycle; a turn is c + L',
L' = s with probability π, else uniform on (0, s) (c = 0.1, s = 2.0,
π = 0.6 ms). A probe arriving at a uniform random time waits for the end
of the current turn, the turns of the contexts between the current one and
its own slot, then its own switch c; plus a base wait B = 0.02 + U(0, 0.02)
and its kernel, 0.05 ms. The 4096² caller runs E = 2.67 ms in chunks of s,
the other K contexts taking a turn between chunks.
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whatif_models as wm  # noqa: E402

C, S, PI, E, N = 0.1, 2.0, 0.6, 2.67, 4000
rng = np.random.default_rng(5)


def turn():
    return C + (S if rng.random() < PI else rng.random() * S)


def rotation_wait(k):
    """The wait of an arrival at a random time beside k busy contexts,
    simulated on an explicit timeline."""
    if k == 0:
        return 0.0
    # A long timeline of turns of contexts 0..k-1 in order; the arrival's
    # slot is after context k-1.
    t_arr = rng.random() * 200.0
    t, i = 0.0, 0
    while True:
        L = turn()
        if t + L > t_arr:
            w = t + L - t_arr
            for j in range(i % k + 1, k):
                w += turn()
            return w + C
        t += L
        i += 1


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rows = {"ts": [], "arrival": [], "kernel": [], "gpu_processes": [], "queue_ms": [],
            "wall_ms": [], "phase": []}
    crow = {"ts": [], "phase": [], "wall_ms": [], "gpu_ms": [], "arrival": []}
    ts = 0
    for k in [0, 1, 2, 3, 4, 6]:
        for kern in ["fft", "gemm"]:
            for _ in range(N):
                q = 0.02 + 0.02 * rng.random() + rotation_wait(k)
                ts += 1_000_000
                rows["ts"].append(ts)
                rows["arrival"].append(True)
                rows["kernel"].append(kern)
                rows["gpu_processes"].append(k + 1)
                rows["queue_ms"].append(q)
                rows["wall_ms"].append(q + 0.05)
                rows["phase"].append(f"whatif tenants={k}")
        for _ in range(N // 4):
            w = rotation_wait(k) + E
            if k > 0:
                for _ in range(int(np.ceil(E / S)) - 1):
                    w += sum(turn() for _ in range(k)) + C
            ts += 1_000_000
            crow["ts"].append(ts)
            crow["phase"].append(f"whatif tenants={k}")
            crow["wall_ms"].append(w)
            crow["gpu_ms"].append(E)
            crow["arrival"].append(True)
    for name, d in [("rows-whatif", rows), ("rows-caller", crow)]:
        t = pa.table(d)
        t = t.set_column(0, "ts", pa.array(d["ts"], pa.int64()).cast(pa.timestamp("ns", tz="UTC")))
        pq.write_table(t, f"{out}/{name}.parquet")
    res = wm.evaluate(out, ["C0", "C1", "C2", "C4"])
    worst = {}
    for key, rs in res.items():
        p = [r for r in rs if r["case"] == "probe" and r["K"] in wm.PREDICT]
        k = [r for r in rs if r["case"] == "kernel_ms" and r["K"] > 0]
        worst[key] = max(abs(e) for r in p + k for e in r["err"])
        print(f"{key}: probe p50 " + ", ".join(f"{r['err'][0]:+.1f}" for r in p)
              + " | p99 " + ", ".join(f"{r['err'][1]:+.1f}" for r in p)
              + " | kernel-ms p50 " + ", ".join(f"{r['err'][0]:+.1f}" for r in k)
              + " | p99 " + ", ".join(f"{r['err'][1]:+.1f}" for r in k)
              + f" | worst {worst[key]:.1f} %")
        info = [r for r in rs if r["case"] == "info"][0]
        print("   fit: " + ", ".join(f"{a}={b:.3f}" for a, b in info.items() if a != "case"))
    ok = worst["C4"] < 5.0
    print("self-check", "passed" if ok else "FAILED", f"(C4 worst {worst['C4']:.1f} %, limit 5 %)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
