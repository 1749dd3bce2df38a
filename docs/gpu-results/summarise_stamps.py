#!/usr/bin/env python3
"""Summary of run-stamps.sh's fidelity step (issue 19).

Usage: summarise_stamps.py RAW_DIR [--json OUT.json]

For each tenant phase and kernel: the wall p50/p99 of each side (the new
agent at its default config, the new agent with wait = "spin", the previous
build, and the independent PyTorch probe), over the window in which the
PyTorch probe ran (all four ran at the same time), each with a bootstrap 95 %
interval (2,000 resamples), and the ratio of each agent side to PyTorch with
its own bootstrap interval (both sides resampled). For the new agent it also
gives `host_wall_ms` (what a sleeping caller sees), the share of rows whose
`wall_ms` came from the GPU clock, and the calibration's error bound.
"""
import glob
import json
import sys

import numpy as np
import pyarrow.parquet as pq

B = 2000
rng = np.random.default_rng(19)


def agent_rows(d):
    files = sorted(glob.glob(f"{d}/probes/**/*.parquet", recursive=True))
    if not files:
        return None
    cols = ["ts", "kernel", "wall_ms", "gpu_ms", "arrival", "submit"]
    t = pq.read_table(files[0]).schema.names
    extra = [c for c in ("host_wall_ms", "wall_clock", "clock_error_us", "queue_ms") if c in t]
    tabs = [pq.read_table(f, columns=cols + extra) for f in files]
    out = {}
    for tab in tabs:
        for c in tab.column_names:
            v = tab[c]
            if c == "ts":
                v = v.cast("int64")
            out.setdefault(c, []).extend(v.to_pylist())
    return out


def torch_rows(path):
    rows = [json.loads(l) for l in open(path)]
    return {
        "ts": [int(r["ts"] * 1e9) for r in rows],
        "kernel": [r["kernel"] for r in rows],
        "wall_ms": [r["wall_ms"] for r in rows],
        "gpu_ms": [r["gpu_ms"] for r in rows],
    }


def pick(rows, kernel, t0, t1, col="wall_ms"):
    out = []
    for i, k in enumerate(rows["kernel"]):
        if k != kernel or not (t0 <= rows["ts"][i] <= t1):
            continue
        if "arrival" in rows and rows["arrival"][i] is False:
            continue
        v = rows[col][i] if col in rows else None
        if v is not None:
            out.append(v)
    return np.array(out, dtype=float)


def q(x, p):
    return float(np.quantile(x, p)) if len(x) else float("nan")


def boot(x, p):
    if len(x) < 2:
        return [float("nan")] * 2
    idx = rng.integers(0, len(x), (B, len(x)))
    qs = np.quantile(x[idx], p, axis=1)
    return [float(np.quantile(qs, 0.025)), float(np.quantile(qs, 0.975))]


def boot_ratio(a, b, p):
    if len(a) < 2 or len(b) < 2:
        return [float("nan")] * 2
    ia = rng.integers(0, len(a), (B, len(a)))
    ib = rng.integers(0, len(b), (B, len(b)))
    r = np.quantile(a[ia], p, axis=1) / np.quantile(b[ib], p, axis=1)
    return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))]


def main():
    raw = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    summary = []
    print("| tenants | kernel | side | n | wall p50 ms [95% CI] | ratio p50 vs torch [CI] | wall p99 ms [95% CI] | ratio p99 vs torch [CI] |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in (0, 1, 3):
        tp = f"{raw}/torch-t{phase}.jsonl"
        try:
            torch = torch_rows(tp)
        except FileNotFoundError:
            continue
        if not torch["ts"]:
            continue
        t0, t1 = min(torch["ts"]), max(torch["ts"])
        sides = {"torch": torch}
        for s in ("new", "spin", "before"):
            r = agent_rows(f"{raw}/{s}-t{phase}")
            if r:
                sides[s] = r
        for kernel in ("fft", "gemm"):
            ref = pick(torch, kernel, t0, t1)
            for s in ("new", "spin", "before", "torch"):
                if s not in sides:
                    continue
                x = pick(sides[s], kernel, t0, t1)
                row = {
                    "tenants": phase, "kernel": kernel, "side": s, "n": int(len(x)),
                    "p50": q(x, 0.5), "p50_ci": boot(x, 0.5),
                    "p99": q(x, 0.99), "p99_ci": boot(x, 0.99),
                }
                if s != "torch":
                    row["ratio_p50"] = row["p50"] / q(ref, 0.5)
                    row["ratio_p50_ci"] = boot_ratio(x, ref, 0.5)
                    row["ratio_p99"] = row["p99"] / q(ref, 0.99)
                    row["ratio_p99_ci"] = boot_ratio(x, ref, 0.99)
                    row["abs_diff_p50_ms"] = row["p50"] - q(ref, 0.5)
                if s == "new":
                    hw = pick(sides[s], kernel, t0, t1, "host_wall_ms")
                    row["host_wall_p50"], row["host_wall_p99"] = q(hw, 0.5), q(hw, 0.99)
                    wc = [c for i, c in enumerate(sides[s].get("wall_clock", []))
                          if sides[s]["kernel"][i] == kernel and t0 <= sides[s]["ts"][i] <= t1]
                    row["gpu_clock_share"] = (sum(1 for c in wc if c == "gpu") / len(wc)) if wc else None
                    ce = pick(sides[s], kernel, t0, t1, "clock_error_us")
                    row["clock_error_us_p50"], row["clock_error_us_max"] = q(ce, 0.5), (float(ce.max()) if len(ce) else float("nan"))
                summary.append(row)
                f = lambda v: f"{v:.3f}"
                ci = lambda c: f"[{c[0]:.3f}, {c[1]:.3f}]"
                rp50 = f"{row['ratio_p50']:.2f} {ci(row['ratio_p50_ci'])}" if s != "torch" else "-"
                rp99 = f"{row['ratio_p99']:.2f} {ci(row['ratio_p99_ci'])}" if s != "torch" else "-"
                print(f"| {phase} | {kernel} | {s} | {row['n']} | {f(row['p50'])} {ci(row['p50_ci'])} | {rp50} | {f(row['p99'])} {ci(row['p99_ci'])} | {rp99} |")
    print()
    print("| tenants | kernel | new: host_wall p50 / p99 ms (sleeping caller) | share wall_clock=gpu | clock_error_us p50 / max |")
    print("|---|---|---|---|---|")
    for r in summary:
        if r["side"] == "new":
            share = r["gpu_clock_share"]
            print(f"| {r['tenants']} | {r['kernel']} | {r['host_wall_p50']:.3f} / {r['host_wall_p99']:.3f} | "
                  f"{share if share is None else round(share, 3)} | {r['clock_error_us_p50']:.2f} / {r['clock_error_us_max']:.2f} |")
    try:
        cpu = [json.loads(l) for l in open(f"{raw}/cpu.jsonl")]
        print()
        print("| tenants | seconds | CPU % of a core: new / spin / before |")
        print("|---|---|---|")
        for c in cpu:
            print(f"| {c['tenants']} | {c['seconds']} | {c['cpu_pct_new']} / {c['cpu_pct_spin']} / {c['cpu_pct_before']} |")
    except FileNotFoundError:
        cpu = []
    if out_json:
        with open(out_json, "w") as fh:
            json.dump({"rows": summary, "cpu": cpu}, fh, indent=1)


if __name__ == "__main__":
    main()
