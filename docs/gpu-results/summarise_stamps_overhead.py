#!/usr/bin/env python3
"""Tenant overhead of run-stamps.sh's `overhead` step (issue 19).

Usage: summarise_stamps_overhead.py RAW_DIR  (tenant-ov-ts.parquet or
tenant-ov.parquet, and timeline.log). A GEMM tenant runs throughout; windows
alternate off / new agent / off / previous agent. Each agent window's
overhead is the tenant's loss in runs/s against the mean of the off windows
right before and after it.
"""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

raw = Path(sys.argv[1])
pq_path = raw / "tenant-ov-ts.parquet"
if not pq_path.exists():
    pq_path = raw / "tenant-ov.parquet"
ts = np.array(pq.read_table(pq_path, columns=["ts"])["ts"].cast("int64").to_pylist()) / 1e9
wins, cur = [], None
for line in open(raw / "timeline.log"):
    m = re.search(r"epoch=([\d.]+)\] window (\w+) round=(\d+) (start|end)", line)
    if m:
        e, side, r, se = m.groups()
        if se == "start":
            cur = (side, int(r), float(e))
        else:
            wins.append((cur[0], cur[1], cur[2], float(e)))
rates = [(s, r, ((ts >= a) & (ts < b)).sum() / (b - a)) for s, r, a, b in wins]
out = {"new": [], "before": []}
for i, (side, _, x) in enumerate(rates):
    if side in out:
        ref = rates[i - 1][2] if i + 1 >= len(rates) else (rates[i - 1][2] + rates[i + 1][2]) / 2
        out[side].append(100 * (ref - x) / ref)
offs = [x for s, _, x in rates if s == "off"]
print("| agent | pairs | overhead per pair, % | median % |")
print("|---|---|---|---|")
for k, v in out.items():
    print(f"| {k} | {len(v)} | {', '.join(f'{a:+.2f}' for a in v)} | {np.median(v):+.2f} |")
print(f"\noff windows: {len(offs)}, tenant runs/s {min(offs):.1f}–{max(offs):.1f} "
      f"(spread {100 * (max(offs) - min(offs)) / np.median(offs):.2f} % of the median)")
json.dump({"windows": [{"side": s, "round": r, "tenant_runs_per_s": float(x)} for s, r, x in rates],
           "overhead_pct": out}, open(raw / "overhead-summary.json", "w"), indent=1)
