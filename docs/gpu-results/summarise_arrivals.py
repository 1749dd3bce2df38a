#!/usr/bin/env python3
"""Summarises run-arrivals.sh results (run here, with the test venv's pyarrow).

  summarise_arrivals.py fidelity DIR...   DIR = unpacked arrivals-fidelity-<rate>
  summarise_arrivals.py overhead DIR

Fidelity: per phase (tenants) and kernel, the agent's arrival runs against the
independent PyTorch probe: n, wall p50 and p99 with bootstrap 95 % intervals
(2000 resamples), and the agent/torch ratios. Prints Markdown and writes
fidelity-<rate>.json beside the inputs' parent.
"""
import glob
import json
import os
import random
import sys

import pyarrow.parquet as pq


def q(v, p):
    v = sorted(v)
    if not v:
        return None
    pos = p * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def boot(v, p, n=2000, seed=7):
    rng = random.Random(seed)
    est = sorted(q([rng.choice(v) for _ in v], p) for _ in range(n))
    return est[int(0.025 * n)], est[int(0.975 * n)]


def agent_rows(d):
    rows = []
    for f in glob.glob(os.path.join(d, "probes", "**", "*.parquet"), recursive=True):
        tb = pq.read_table(f)
        t = tb.drop_columns([c for c in ("ts",) if c in tb.column_names]).to_pylist()
        rows.extend(t)
    return rows


def fidelity(dirs):
    out = []
    for d in dirs:
        rate = os.path.basename(glob.glob(os.path.join(d, "agent-*.toml"))[0])[6:-5]
        for phase in (0, 1, 2, 3, 4):
            tj = os.path.join(d, f"torch-t{phase}.jsonl")
            tp = os.path.join(d, f"torch-t{phase}.parquet")
            if not (os.path.exists(tj) or os.path.exists(tp)):
                continue
            a = agent_rows(os.path.join(d, f"agent-t{phase}"))
            t = ([json.loads(l) for l in open(tj)] if os.path.exists(tj)
                 else pq.read_table(tp).to_pylist())
            for k in ("fft", "gemm"):
                aw = [r["wall_ms"] for r in a if r["kernel"] == k and r.get("arrival")]
                tw = [r["wall_ms"] for r in t if r["kernel"] == k]
                procs = sorted({r.get("gpu_processes") for r in a if r["kernel"] == k}, key=lambda x: -1 if x is None else x)
                blocked = sum(1 for r in a if r["kernel"] == k and (r.get("submit") or "").endswith("+block"))
                row = {"rate_hz": float(rate), "tenants": phase, "kernel": k,
                       "agent_n": len(aw), "torch_n": len(tw), "agent_gpu_processes": procs,
                       "agent_blocked_waits": blocked}
                for name, p in (("p50", 0.5), ("p99", 0.99)):
                    av, tv = q(aw, p), q(tw, p)
                    row[f"agent_{name}"] = av
                    row[f"torch_{name}"] = tv
                    row[f"agent_{name}_ci"] = boot(aw, p) if aw else None
                    row[f"torch_{name}_ci"] = boot(tw, p) if tw else None
                    row[f"ratio_{name}"] = av / tv if av and tv else None
                out.append(row)
    print("| rate Hz | tenants | kernel | n agent / torch | wall p50 agent / torch (ms) | ratio | wall p99 agent [95% CI] | wall p99 torch [95% CI] | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out:
        f = lambda x: f"{x:.3f}"
        ci = lambda c: f"[{c[0]:.3f}, {c[1]:.3f}]" if c else "-"
        print(f"| {r['rate_hz']:g} | {r['tenants']} | {r['kernel']} | {r['agent_n']} / {r['torch_n']} | "
              f"{f(r['agent_p50'])} / {f(r['torch_p50'])} | {r['ratio_p50']:.2f} | {f(r['agent_p99'])} {ci(r['agent_p99_ci'])} | "
              f"{f(r['torch_p99'])} {ci(r['torch_p99_ci'])} | {r['ratio_p99']:.2f} |")
    return out


def overhead_summary(d, timeline):
    """Tenant GEMM runs/s in each window A (agent off) and B (agent on)."""
    import re
    import statistics
    t = pq.read_table(os.path.join(d, "tenant-ov.parquet"), columns=["ts"]).column("ts")
    ts = sorted(x.value / 1e9 for x in t)
    import bisect
    win = {}
    for line in open(timeline):
        m = re.search(r"epoch=([0-9.]+)\] window ([AB]) rate=([0-9.]+) pair=(\d+) (start|end)", line)
        if m:
            win.setdefault((float(m.group(3)), int(m.group(4)), m.group(2)), {})[m.group(5)] = float(m.group(1))
    res = {}
    for (rate, pair, ab), w in sorted(win.items()):
        n = bisect.bisect_left(ts, w["end"]) - bisect.bisect_left(ts, w["start"])
        res.setdefault(rate, {}).setdefault(pair, {})[ab] = n / (w["end"] - w["start"])
    out = []
    print("| agent rate Hz | pairs | tenant runs/s alone (median) | overhead per pair, % | median % | spread (max−min) % | tenant drift across A windows % |")
    print("|---|---|---|---|---|---|---|")
    for rate, pairs in sorted(res.items()):
        ov = [100 * (1 - p["B"] / p["A"]) for p in pairs.values() if "A" in p and "B" in p]
        a = [p["A"] for p in pairs.values() if "A" in p]
        drift = 100 * (a[-1] / a[0] - 1) if len(a) > 1 else None
        row = {"rate_hz": rate, "pairs": pairs, "overhead_pct": ov, "median_pct": statistics.median(ov),
               "spread_pct": max(ov) - min(ov), "drift_pct": drift}
        out.append(row)
        print(f"| {rate:g} | {len(ov)} | {statistics.median(a):.1f} | {', '.join(f'{x:+.2f}' for x in ov)} | "
              f"{row['median_pct']:+.2f} | {row['spread_pct']:.2f} | {drift:+.2f} |")
    return out


if __name__ == "__main__":
    if sys.argv[1] == "fidelity":
        res = fidelity(sys.argv[2:])
        json.dump(res, open(sys.argv[2].rstrip("/") + ".json", "w"), indent=1)
    elif sys.argv[1] == "overhead":
        res = overhead_summary(sys.argv[2], sys.argv[3])
        json.dump(res, open(sys.argv[2].rstrip("/") + ".json", "w"), indent=1, default=str)
    else:
        sys.exit(f"unknown step {sys.argv[1]!r} (fidelity or overhead)")
