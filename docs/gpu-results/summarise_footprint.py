#!/usr/bin/env python3
"""Summarises run-footprint.sh results.

  summarise_footprint.py RAW_DIR [LAG_S]

Per agent build (before/after) and GPU count: median memory over the run and
the agent's GPU memory per GPU, and its CPU share of one core (utime+stime
over wall time, from 1 s samples) in each phase: idle, 3 tenants on GPU 0,
3 tenants on every GPU. Tenants need ~9 s to set up before they contend; runs
made before the script waited for them (the first footprint call) are read
with LAG_S (default 0) added to each phase's start, and the last phase runs
to the agent's last sample.
"""
import json
import os
import re
import statistics
import sys

raw = sys.argv[1]
lag = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
marks = {}
for line in open(os.path.join(raw, "timeline.log")):
    m = re.match(r"\[(\d\d):(\d\d):(\d\d\.\d+)\] (\S+): (.*)", line.strip())
    if m:
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        marks.setdefault(m.group(4), []).append((t, m.group(5)))
PHASES = ["idle", "3 tenants on GPU 0", "3 tenants on every GPU"]
out = []
print("| agent | GPUs | VmRSS MiB | RssAnon MiB | RssFile MiB | Pss MiB | agent GPU MiB per GPU | CPU % of one core: idle / 3 tenants on GPU 0 / 3 tenants on every GPU (window s) | per GPU, all busy |")
print("|---|---|---|---|---|---|---|---|---|")
for tag in sorted(marks, key=lambda t: (int(t.split("-g")[1]), t)):
    f = os.path.join(raw, f"{tag}.jsonl")
    if not os.path.exists(f):
        continue
    s = [json.loads(l) for l in open(f) if l.strip()]
    n = int(tag.split("-g")[1])
    day = lambda x: x["t"] % 86400
    ms = marks[tag]
    cpu = {}
    for i, (t, name) in enumerate(ms):
        if name not in PHASES:
            continue
        a = t + (lag if not any(x[1].startswith("starting") for x in ms) and name != "idle" else 0)
        b = ms[i + 1][0] if i + 1 < len(ms) and name != PHASES[-1] else day(s[-1]) + 0.01
        w = [x for x in s if a + 0.5 <= day(x) <= b]
        if len(w) >= 2:
            dt = w[-1]["t"] - w[0]["t"]
            cpu[name] = (100 * (w[-1]["cpu_s"] - w[0]["cpu_s"]) / dt, dt)
    steady = [x for x in s if x["gpu_mib"] > 0]
    med = lambda k: statistics.median(x[k] for x in steady) / 1024
    row = {"tag": tag, "gpus": n, "vm_rss_mib": med("vm_rss_kib"), "rss_anon_mib": med("rss_anon_kib"),
           "rss_file_mib": med("rss_file_kib"), "pss_mib": med("pss_kib"),
           "gpu_mib_per_gpu": statistics.median(x["gpu_mib"] for x in steady) / n,
           "cpu_pct": {k: v[0] for k, v in cpu.items()}, "window_s": {k: v[1] for k, v in cpu.items()},
           "samples": len(s), "lag_s": lag}
    out.append(row)
    c = " / ".join(f"{cpu[p][0]:.2f} ({cpu[p][1]:.0f})" if p in cpu else "n/a" for p in PHASES)
    busy = cpu.get(PHASES[-1])
    print(f"| {tag.split('-')[0]} | {n} | {row['vm_rss_mib']:.0f} | {row['rss_anon_mib']:.0f} | {row['rss_file_mib']:.0f} | "
          f"{row['pss_mib']:.0f} | {row['gpu_mib_per_gpu']:.0f} | {c} | {busy[0] / n:.2f} |" if busy else "| n/a |")
json.dump(out, open(os.path.join(raw, "footprint-summary.json"), "w"), indent=1)
