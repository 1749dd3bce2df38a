#!/usr/bin/env python3
"""Cuts the raw rows of run-blame-whatif.sh into its phases and summarises them.

    python3 summarise_blame_whatif.py RAW OUT

RAW: the unpacked bw.tar.gz (timeline.log, whatif-data/, blame-data/,
whatif-caller.parquet, pids.txt, *-agent.log). OUT gets:
  rows-whatif.parquet, rows-blame.parquet   the agent's arrival rows, each
                                             with its phase label (settle
                                             time left out), the columns the
                                             analysis reads
  rows-caller.parquet                        the 4096² GEMM caller's rows
  phases/<label>/probes/...                  the same rows per phase in the
                                             agent's layout, for `slicetrace
                                             whatif` / `blame` (not committed)
  summary.json                               per phase and kernel: n, busy
                                             counts, wall/queue p50 and p99
                                             with 95 % bootstrap intervals;
                                             NVML's sample period; the event
                                             clock per SM cycle by tenant count
Needs numpy and pyarrow.
"""
import json
import os
import re
import sys
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RAW, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(1)

KEEP = ["ts", "node", "gpu_uuid", "kernel", "shape", "arrival", "wall_ms", "gpu_ms",
        "queue_ms", "host_wall_ms", "wall_clock", "clock_error_us", "sm_clock_mhz",
        "gpu_processes", "busy_tenants", "busy_count", "event_inflated", "correct"]


def phases():
    """(label, begin, end) epochs from timeline.log."""
    begin, out = {}, []
    for line in open(os.path.join(RAW, "timeline.log")):
        m = re.search(r"epoch=([0-9.]+)\] phase (.+) (begin|end)$", line.strip())
        if not m:
            continue
        t, label, what = float(m.group(1)), m.group(2), m.group(3)
        if what == "begin":
            begin[label] = t
        elif label in begin:
            out.append((label, begin.pop(label), t))
    return out


def agent_rows(data_dir):
    files = []
    for root, _, names in os.walk(os.path.join(RAW, data_dir, "probes")):
        files += [os.path.join(root, n) for n in names if n.endswith(".parquet")]
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def ci(x, q, n=1000):
    """q-quantile of x and a 95 % bootstrap interval."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return None
    b = np.quantile(rng.choice(x, size=(n, len(x)), replace=True), q, axis=1)
    return [round(float(np.quantile(x, q)), 4), round(float(np.quantile(b, 0.025)), 4),
            round(float(np.quantile(b, 0.975)), 4)]


def cut(t, spans, prefix):
    """Rows of t inside each phase, labelled; also written per phase."""
    ts = t.column("ts").cast(pa.int64()).to_numpy() / 1e9
    label = np.array([None] * len(ts), dtype=object)
    for name, a, b in spans:
        if not name.startswith(prefix):
            continue
        label[(ts >= a) & (ts <= b)] = name
    keep = np.array([l is not None for l in label])
    sub = t.filter(pa.array(keep)).append_column("phase", pa.array(label[keep].tolist()))
    for name in sorted(set(label[keep])):
        part = sub.filter(pc.equal(sub["phase"], name)).drop_columns(["phase"])
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        d = os.path.join(OUT, "phases", slug, "probes", "date=2026-12-07", "node=gpu-node")
        os.makedirs(d, exist_ok=True)
        pq.write_table(part, os.path.join(d, "part-0.parquet"))
    return sub


def phase_summary(sub):
    out = {}
    arr = sub.filter(pc.equal(sub["arrival"], True))
    for name in sorted(set(arr.column("phase").to_pylist())):
        p = arr.filter(pc.equal(arr["phase"], name))
        for k in ["fft", "gemm"]:
            r = p.filter(pc.equal(p["kernel"], k))
            if r.num_rows == 0:
                continue
            busy = [b for b in r.column("busy_count").to_pylist()]
            known = [b for b in busy if b is not None]
            tenants = Counter(r.column("busy_tenants").to_pylist())
            out[f"{name} | {k}"] = {
                "n": r.num_rows,
                "busy_count": {str(v): known.count(v) for v in sorted(set(known))},
                "busy_unknown": busy.count(None),
                "gpu_processes": {str(v): c for v, c in sorted(Counter(r.column("gpu_processes").to_pylist()).items(), key=lambda x: str(x[0]))},
                "busy_share_by_tenant": tenants,
                "wall_p50": ci(r.column("wall_ms").to_numpy(zero_copy_only=False), 0.5),
                "wall_p99": ci(r.column("wall_ms").to_numpy(zero_copy_only=False), 0.99),
                "queue_p50": ci(r.column("queue_ms").to_numpy(zero_copy_only=False), 0.5),
                "queue_p99": ci(r.column("queue_ms").to_numpy(zero_copy_only=False), 0.99),
                "gpu_p50": ci(r.column("gpu_ms").to_numpy(zero_copy_only=False), 0.5),
                "wall_clock_gpu_share": round(pc.sum(pc.equal(r["wall_clock"], "gpu")).as_py() / r.num_rows, 3),
            }
    return out


def Counter(values):
    c = defaultdict(int)
    for v in values:
        if isinstance(v, list):
            for t in v:
                c[t.rsplit("=", 1)[0]] += 1
        else:
            c[v] += 1
    return dict(c)


def event_by_tenants(sub):
    """Event time per SM cycle (gpu_ms × MHz / 1000) of arrival rows not
    flagged event_inflated, by kernel and gpu_processes (issue 21, item 5)."""
    arr = sub.filter(pc.equal(sub["arrival"], True))
    out = {}
    for k in ["fft", "gemm"]:
        r = arr.filter(pc.equal(arr["kernel"], k))
        g = r.column("gpu_ms").to_numpy(zero_copy_only=False).astype(float)
        mhz = np.array([np.nan if v is None else v for v in r.column("sm_clock_mhz").to_pylist()], dtype=float)
        inflated = np.array([bool(v) for v in r.column("event_inflated").to_pylist()])
        n = np.array([-1 if v is None else v for v in r.column("gpu_processes").to_pylist()])
        mc = g * mhz / 1000.0
        for t in sorted(set(n.tolist())):
            sel = (n == t) & ~inflated & ~np.isnan(mc)
            if sel.sum() == 0:
                continue
            out[f"{k} tenants={t}"] = {"n": int(sel.sum()), "mcycles_p50": ci(mc[sel], 0.5),
                                       "sm_mhz_p50": float(np.median(mhz[sel]))}
    return out


def nvml_period(log):
    p = os.path.join(RAW, log)
    if not os.path.exists(p):
        return None
    vals = re.findall(r'nvml_process_sample_period_ms[=:"\s]+([0-9.]+)', open(p).read())
    clock = re.findall(r'nvml_process_clock[=:"\s]+([A-Za-z]+(?:\([-0-9]+\))?)', open(p).read())
    return {"period_ms": [float(v) for v in vals], "clock": clock}


summary = {"phases": [(l, round(b - a, 1)) for l, a, b in phases()]}
spans = phases()
for name, data_dir, prefix in [("whatif", "whatif-data", "whatif"), ("blame", "blame-data", "blame")]:
    t = agent_rows(data_dir)
    if t is None:
        continue
    t = t.select([c for c in KEEP if c in t.column_names])
    sub = cut(t, spans, prefix)
    pq.write_table(sub, os.path.join(OUT, f"rows-{name}.parquet"), compression="zstd")
    summary[name] = phase_summary(sub)
    summary[f"{name}_nvml"] = nvml_period(f"{name}-agent.log")
    if name == "whatif":
        summary["event_per_sm_cycle_by_tenants"] = event_by_tenants(sub)
caller = os.path.join(RAW, "whatif-caller.parquet")
if os.path.exists(caller):
    c = pq.read_table(caller).select(["ts", "kernel", "shape", "wall_ms", "gpu_ms", "queue_ms", "correct"])
    sub = cut(c.append_column("arrival", pa.array([True] * c.num_rows)), spans, "whatif")
    pq.write_table(sub, os.path.join(OUT, "rows-caller.parquet"), compression="zstd")
    by = {}
    for name in sorted(set(sub.column("phase").to_pylist())):
        r = sub.filter(pc.equal(sub["phase"], name))
        by[name] = {"n": r.num_rows,
                    "wall_p50": ci(r.column("wall_ms").to_numpy(zero_copy_only=False), 0.5),
                    "wall_p99": ci(r.column("wall_ms").to_numpy(zero_copy_only=False), 0.99),
                    "gpu_p50": ci(r.column("gpu_ms").to_numpy(zero_copy_only=False), 0.5)}
    summary["caller_4096_gemm"] = by
if os.path.exists(os.path.join(RAW, "pids.txt")):
    summary["pids"] = open(os.path.join(RAW, "pids.txt")).read().splitlines()
json.dump(summary, open(os.path.join(OUT, "summary.json"), "w"), indent=1, default=str)
print(json.dumps({k: (v if k in ("phases",) else "…") for k, v in summary.items()}, indent=1))
