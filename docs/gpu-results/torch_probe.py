#!/usr/bin/env python3
"""Independent timing of slicetrace's probe kernels with PyTorch.

Same sizes as the agent's `light` preset: a batched 1-D complex FFT
(16 x 4096, complex64) and a 1024^2 fp16 GEMM. Each run is timed like the
agent does it: CUDA events around the op, and the host clock from launch to
completion (synchronize on the end event).

Arrival patterns:
  random : one run every ~2 ms (like `slicetrace-load --period-ms 2`), with
           the events recorded as separate calls (stream) or captured in one
           CUDA graph (graph);
  agent  : the agent's pattern: a cycle every 200 ms of 8 back-to-back FFT
           runs then 8 GEMM runs, each run followed by a small reduction read
           back to the host (as the agent's correctness check does).
Prints one JSON line per (kernel, mode) with p50/p99 of gpu_ms, wall_ms.
"""
import json
import random
import sys
import time

import torch

secs = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
label = sys.argv[2] if len(sys.argv) > 2 else ""
# Optional: "jitter" makes the random pattern sleep uniform(1, 3) ms instead
# of exactly 2 ms, and runs only that pattern (graph mode).
only_jitter = len(sys.argv) > 3 and sys.argv[3] == "jitter"
dev = torch.device("cuda")
x = torch.randn(16, 4096, dtype=torch.complex64, device=dev)
a = torch.randn(1024, 1024, dtype=torch.float16, device=dev)
b = torch.randn(1024, 1024, dtype=torch.float16, device=dev)
out_fft = torch.empty_like(x)
out_mm = torch.empty(1024, 1024, dtype=torch.float16, device=dev)
ops = {
    "fft": lambda: torch.fft.fft(x, out=out_fft),
    "gemm": lambda: torch.matmul(a, b, out=out_mm),
}


def pct(v, q):
    v = sorted(v)
    pos = q * (len(v) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def measure(kernel, mode):
    op = ops[kernel]
    for _ in range(20):
        op()
    torch.cuda.synchronize()
    graph = None
    if mode == "graph":
        try:
            s = torch.cuda.Event(enable_timing=True, external=True)
            e = torch.cuda.Event(enable_timing=True, external=True)
        except TypeError:
            return {"kernel": kernel, "mode": mode, "error": "torch.cuda.Event has no external= in this torch"}
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            op()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            s.record()
            op()
            e.record()
        torch.cuda.synchronize()
    else:
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
    gpu, wall = [], []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        t0 = time.perf_counter()
        if graph is not None:
            graph.replay()
        else:
            s.record()
            op()
            e.record()
        e.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        gpu.append(s.elapsed_time(e))
        time.sleep(random.uniform(0.001, 0.003) if only_jitter else 0.002)
    return {
        "label": label, "kernel": kernel, "mode": mode, "runs": len(wall),
        "gpu_ms_p50": pct(gpu, 0.5), "gpu_ms_p99": pct(gpu, 0.99),
        "wall_ms_p50": pct(wall, 0.5), "wall_ms_p99": pct(wall, 0.99),
        "queue_us_p50": pct([w - g for w, g in zip(wall, gpu)], 0.5) * 1e3,
    }


def agent_pattern():
    s = torch.cuda.Event(enable_timing=True)
    e = torch.cuda.Event(enable_timing=True)
    res = {k: {"gpu": [], "wall": [], "gpu0": [], "wall0": []} for k in ops}
    outs = {"fft": out_fft, "gemm": out_mm}
    end = time.monotonic() + secs
    while time.monotonic() < end:
        cycle_start = time.monotonic()
        for k in ("fft", "gemm"):
            for seq in range(8):
                t0 = time.perf_counter()
                s.record()
                ops[k]()
                e.record()
                e.synchronize()
                w = (time.perf_counter() - t0) * 1e3
                g = s.elapsed_time(e)
                res[k]["wall"].append(w)
                res[k]["gpu"].append(g)
                if seq == 0:
                    res[k]["wall0"].append(w)
                    res[k]["gpu0"].append(g)
                torch.linalg.vector_norm(outs[k].float() if k == "gemm" else outs[k]).item()
        time.sleep(max(0.0, 0.2 - (time.monotonic() - cycle_start)))
    for k, r in res.items():
        print(json.dumps({
            "label": label, "kernel": k, "mode": "agent", "runs": len(r["wall"]),
            "gpu_ms_p50": pct(r["gpu"], 0.5), "gpu_ms_p99": pct(r["gpu"], 0.99),
            "wall_ms_p50": pct(r["wall"], 0.5), "wall_ms_p99": pct(r["wall"], 0.99),
            "first_wall_ms_p50": pct(r["wall0"], 0.5), "first_wall_ms_p99": pct(r["wall0"], 0.99),
        }), flush=True)


if only_jitter:
    for k in ("fft", "gemm"):
        r = measure(k, "graph")
        r["mode"] = "graph-jitter"
        print(json.dumps(r), flush=True)
else:
    for k in ("fft", "gemm"):
        for m in ("stream", "graph"):
            print(json.dumps(measure(k, m)), flush=True)
    agent_pattern()
