#!/usr/bin/env python3
"""Summarises run-cpu-profile.sh results (issue 13).

  summarise_cpu_profile.py RAW_DIR

Per agent window (idle / busy, 4 GPUs): CPU share of one core over the
window from two per-thread snapshots (threads.py), grouped by thread name
(probe-gpuN = the probe threads, cuda-EvtHandlr = the driver's event
threads, slicetrace-rt = the async runtime, parquet-writer), with context
switches per second; the probe threads' own per-stage CPU from their
"probe thread stopped" log lines (whole run, self-test included); memory
and the agent's GPU memory per GPU; NVML call costs; the set-up stages'
GPU memory with each stack limit; the planted-fault runs. Writes
cpu-profile-summary.json beside the inputs.
"""
import collections
import json
import os
import re
import sys

raw = sys.argv[1]
out = {"windows": {}, "stages": {}, "nvml": [], "planted": []}
snaps = [json.loads(l) for l in open(os.path.join(raw, "threads.jsonl"))]
by = {}
for s in snaps:
    tag, edge = s["label"].split(":")
    by.setdefault(tag, {})[edge] = s
for tag, d in by.items():
    if "begin" not in d or "end" not in d:
        continue
    a, b = d["begin"], d["end"]
    dt = b["t"] - a["t"]
    old = {t["tid"]: t for t in a["threads"]}
    groups = collections.defaultdict(lambda: {"user_s": 0.0, "sys_s": 0.0, "vcs": 0, "nvcs": 0, "threads": 0})
    for t in b["threads"]:
        o = old.get(t["tid"])
        if not o:
            continue
        g = groups[re.sub(r"\d+$", "N", t["comm"])]
        g["user_s"] += t["utime_s"] - o["utime_s"]
        g["sys_s"] += t["stime_s"] - o["stime_s"]
        g["vcs"] += t["vcs"] - o["vcs"]
        g["nvcs"] += t["nvcs"] - o["nvcs"]
        g["threads"] += 1
    total = sum(g["user_s"] + g["sys_s"] for g in groups.values())
    ngpu = int(tag.rsplit("-g", 1)[1])
    w = {"window_s": dt, "gpus": ngpu, "cpu_pct": 100 * total / dt, "cpu_pct_per_gpu": 100 * total / dt / ngpu,
         "by_thread": {k: {"cpu_pct": 100 * (v["user_s"] + v["sys_s"]) / dt, "user_pct": 100 * v["user_s"] / dt,
                           "sys_pct": 100 * v["sys_s"] / dt, "switches_per_s": (v["vcs"] + v["nvcs"]) / dt,
                           "threads": v["threads"]} for k, v in groups.items()}}
    log = os.path.join(raw, f"{tag}.log")
    stages = []
    for line in open(log) if os.path.exists(log) else []:
        if "probe thread stopped" in line:
            m = dict(re.findall(r"(\w+)=([\w.=-]+)", line.split("probe thread stopped", 1)[1]))
            by_stage = dict(re.findall(r"(\w+)=([\d.]+)", line.split("cpu_ms_by_stage=", 1)[1]))
            stages.append({"arrivals": int(m["arrivals"]), "cpu_ms": float(m["cpu_ms"]),
                           **{f"{k}_ms": float(v) for k, v in by_stage.items()}})
    if stages:
        n = sum(s["arrivals"] for s in stages)
        w["probe_thread_ms_per_arrival"] = {k[:-3]: sum(s[k] for s in stages) / n
                                            for k in stages[0] if k.endswith("_ms") and k != "cpu_ms"}
        w["probe_thread_ms_per_arrival"]["all"] = sum(s["cpu_ms"] for s in stages) / n
        w["arrivals"] = n
    mem = os.path.join(raw, f"{tag}.mem")
    if os.path.exists(mem):
        txt = open(mem).read()
        for k in ("VmRSS", "RssAnon", "RssFile", "Pss"):
            m = re.search(rf"^{k}:\s+(\d+)", txt, re.M)
            if m:
                w[f"{k.lower()}_mib"] = int(m.group(1)) / 1024
        gm = [int(x) for x in re.findall(r", (\d+) MiB", txt)]
        if gm:
            w["gpu_mib_per_gpu"] = max(gm)
    out["windows"][tag] = w
for f in sorted(os.listdir(raw)):
    m = re.match(r"stages-stack(\d+)\.jsonl$", f)
    if m:
        out["stages"][m.group(1)] = [json.loads(l) for l in open(os.path.join(raw, f)) if '"stage"' in l]
p = os.path.join(raw, "nvml-cost.jsonl")
if os.path.exists(p):
    out["nvml"] = [json.loads(l) for l in open(p)]
p = os.path.join(raw, "stages-stack0-planted.jsonl")
if os.path.exists(p):
    out["planted"] = [json.loads(l) for l in open(p)]

for tag, w in out["windows"].items():
    print(f"## {tag}: {w['cpu_pct']:.2f} % of one core ({w['cpu_pct_per_gpu']:.2f} % per GPU) over {w['window_s']:.1f} s;"
          f" RssAnon {w.get('rssanon_mib', 0):.0f} MiB, VmRSS {w.get('vmrss_mib', 0):.0f} MiB,"
          f" GPU {w.get('gpu_mib_per_gpu', 'n/a')} MiB per GPU")
    for k, v in sorted(w["by_thread"].items(), key=lambda kv: -kv[1]["cpu_pct"]):
        print(f"   {k:16s} x{v['threads']}: {v['cpu_pct']:.2f} % (user {v['user_pct']:.2f}, sys {v['sys_pct']:.2f}),"
              f" {v['switches_per_s']:.0f} switches/s")
    if "probe_thread_ms_per_arrival" in w:
        print("   probe thread CPU per arrival, ms:",
              ", ".join(f"{k} {v:.3f}" for k, v in w["probe_thread_ms_per_arrival"].items()), f"({w['arrivals']} arrivals)")
for lim, st in out["stages"].items():
    print(f"stack {lim} B: " + ", ".join(f"{s['stage']} {s.get('gpu_used_mib')}" for s in st))
for n in out["nvml"]:
    print(f"nvml {n['label']:4s} {n['call']:18s} wall p50 {n['wall_us_p50']:.1f} µs, CPU {n['cpu_us_mean']:.1f} µs")
for p in out["planted"]:
    print(f"planted {p['kernel']} {p['shape']}: runs {p['runs']}, incorrect {p['incorrect']}, planted {p['planted']}, caught {p['caught']}")
json.dump(out, open(os.path.join(raw, "cpu-profile-summary.json"), "w"), indent=1)
