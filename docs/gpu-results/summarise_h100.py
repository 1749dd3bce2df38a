#!/usr/bin/env python3
"""Summarises a run-h100.sh raw folder (JSON only: runs on the device's
plain python3). The Parquet-based tables (compare, correctness) are made
afterwards by analyse_h100.sh with `slicetrace` and DuckDB."""
import glob
import json
import os
import statistics
import sys

R = sys.argv[1]


def load(p):
    try:
        with open(p) as f:
            txt = f.read().strip()
        return json.loads(txt.splitlines()[-1]) if not txt.startswith("[") else json.loads(txt)
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def f(x, d=4):
    return "n/a" if x is None else f"{x:.{d}f}"


print("## 1. Probe check (slicetrace-load, light preset, 2 ms between runs)\n")
print("| kernel | submit | tenants | runs | incorrect | gpu_ms p50 | gpu_ms p99 | wall_ms p50 | wall_ms p99 |")
print("|---|---|---|---|---|---|---|---|---|")
for k in ("fft", "gemm"):
    for mode in ("graph", "stream", "legacy"):
        for t in (0, 1, 3):
            j = load(f"{R}/load-{k}-{mode}-t{t}.json")
            if "error" in j:
                print(f"| {k} | {mode} | {t} | error: {j['error']} |")
                continue
            print(f"| {k} {j['shape']} | {j.get('submit', mode)} | {t} | {j['runs']} | {j['incorrect']} | {f(j['gpu_p50_ms'])} | {f(j['gpu_p99_ms'])} | {f(j['wall_p50_ms'])} | {f(j['wall_p99_ms'])} |")

agent = load(f"{R}/agent-light.json")
print("\n## 2. Agent, light preset, 200 ms interval, by tenants on the GPU (NVML)\n")
print("| kernel | tenants | runs | gpu_ms p50 | gpu_ms p99 | wall_ms p50 | wall_ms p99 | queue_ms p50 | queue_ms p99 | wall p99 / alone | jitter p99/p50 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
base = {}
rows = agent if isinstance(agent, list) else []
for r in sorted(rows, key=lambda r: (r["kernel"], -1 if r["tenants"] is None else r["tenants"])):
    if r["tenants"] == 0:
        base[r["kernel"]] = r["wall_ms_p99"]
for r in sorted(rows, key=lambda r: (r["kernel"], -1 if r["tenants"] is None else r["tenants"])):
    b = base.get(r["kernel"])
    print(f"| {r['kernel']} | {r['tenants']} | {r['runs']} | {f(r['gpu_ms_p50'])} | {f(r['gpu_ms_p99'])} | {f(r['wall_ms_p50'])} | {f(r['wall_ms_p99'])} | {f(r['queue_ms_p50'])} | {f(r['queue_ms_p99'])} | {f(r['wall_ms_p99'] / b, 2) if b else 'n/a'}x | {f(r['wall_ms_p99'] / r['wall_ms_p50'], 2)} |")

print("\n## 3. Fidelity: agent vs PyTorch, same sizes, same conditions\n")
torch_rows = []
try:
    with open(f"{R}/torch.jsonl") as fh:
        torch_rows = [json.loads(l) for l in fh if l.strip()]
except OSError:
    pass
print("Same arrival pattern on both sides. `agent` rows: the agent (8 back-to-back runs per kernel every 200 ms, each followed by its check) against PyTorch doing the same; `random` rows: slicetrace-load (one run every 2 ms) against PyTorch doing the same.\n")
print("| kernel | tenants | pattern | submit | source | runs | gpu_ms p50 | gpu_ms p99 | wall_ms p50 | wall_ms p99 | wall p50 ours/torch | wall p99 ours/torch |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def trow(k, t, mode):
    return next((x for x in torch_rows if x.get("kernel") == k and x.get("mode") == mode and x.get("label") == f"tenants={t}" and "error" not in x), None)


for k in ("fft", "gemm"):
    for t in (0, 1, 3):
        pairs = []
        ours = next((r for r in rows if r["kernel"] == k and r["tenants"] == t), None)
        if ours:
            pairs.append(("agent", "graph", "agent", {"runs": ours["runs"], "gpu_p50_ms": ours["gpu_ms_p50"], "gpu_p99_ms": ours["gpu_ms_p99"], "wall_p50_ms": ours["wall_ms_p50"], "wall_p99_ms": ours["wall_ms_p99"]}, trow(k, t, "agent")))
        for mode, tmode in (("graph", "graph"), ("stream", "stream"), ("legacy", "stream")):
            j = load(f"{R}/load-{k}-{mode}-t{t}.json")
            if "error" not in j:
                pairs.append(("random", mode, "slicetrace-load", j, trow(k, t, tmode)))
        for pattern, mode, src, o, tr in pairs:
            print(f"| {k} | {t} | {pattern} | {mode} | {src} | {o['runs']} | {f(o['gpu_p50_ms'])} | {f(o['gpu_p99_ms'])} | {f(o['wall_p50_ms'])} | {f(o['wall_p99_ms'])} | | |")
            if tr:
                r50 = o["wall_p50_ms"] / tr["wall_ms_p50"]
                r99 = o["wall_p99_ms"] / tr["wall_ms_p99"]
                print(f"| {k} | {t} | {pattern} | {tr['mode']} | pytorch | {tr['runs']} | {f(tr['gpu_ms_p50'])} | {f(tr['gpu_ms_p99'])} | {f(tr['wall_ms_p50'])} | {f(tr['wall_ms_p99'])} | {r50:.2f} | {r99:.2f} |")

print("\n## 4. Overhead on a tenant (article GEMM 4096^2 fp32), agent at its default 1 s interval\n")
print("| pair | tenant runs/s alone | tenant runs/s beside agent | ratio | agent GPU duty cycle (ms of gpu_ms per s) |")
print("|---|---|---|---|---|")
ratios = []
for p in (1, 2, 3):
    a, w = load(f"{R}/ovh-alone-{p}.json"), load(f"{R}/ovh-with-{p}.json")
    ag = load(f"{R}/ovh-agent-{p}.json")
    duty = None
    if isinstance(ag, list) and ag:
        tot = sum(r["gpu_ms_sum"] for r in ag)
        span = (max(r["last_ns"] for r in ag) - min(r["first_ns"] for r in ag)) / 1e9
        duty = tot / span if span > 0 else None
    if "error" in a or "error" in w:
        print(f"| {p} | error |")
        continue
    ratio = w["runs_per_s"] / a["runs_per_s"]
    ratios.append(ratio)
    print(f"| {p} | {a['runs_per_s']:.2f} | {w['runs_per_s']:.2f} | {ratio:.4f} | {f(duty, 3)} |")
if ratios:
    m = statistics.median(ratios)
    print(f"\nMedian ratio {m:.4f}: tenant throughput change {(m - 1) * 100:+.2f}%")

print("\n## 5. Timing floor on the idle GPU (agent, tenants = 0): wall_ms - gpu_ms\n")
for r in rows:
    if r["tenants"] == 0:
        print(f"- {r['kernel']}: p50 {r['queue_ms_p50'] * 1000:.1f} us, p99 {r['queue_ms_p99'] * 1000:.1f} us")

print("\n## 6. Detection (3 tenants started at a logged time; window 30 s, evaluation every 2 s)\n")
print(json.dumps(load(f"{R}/detection.json")))

print("\n## 7. Agent, article preset (4096x4096 c2c FFT, 4096^2 fp32 GEMM), 500 ms interval\n")
art = load(f"{R}/agent-article.json")
print("| kernel | tenants | runs | gpu_ms p50 | gpu_ms p99 | wall_ms p50 | wall_ms p99 | queue_ms p99 |")
print("|---|---|---|---|---|---|---|---|")
for r in sorted(art if isinstance(art, list) else [], key=lambda r: (r["kernel"], -1 if r["tenants"] is None else r["tenants"])):
    print(f"| {r['kernel']} | {r['tenants']} | {r['runs']} | {f(r['gpu_ms_p50'])} | {f(r['gpu_ms_p99'])} | {f(r['wall_ms_p50'])} | {f(r['wall_ms_p99'])} | {f(r['queue_ms_p99'])} |")

print("\n## 8. Correctness (slicetrace-load runs; per-row rel_error is in the Parquet files)\n")
for p in sorted(glob.glob(f"{R}/load-*.json")):
    j = load(p)
    if "error" not in j:
        print(f"- {os.path.basename(p)}: {j['runs']} runs, {j['incorrect']} incorrect")
