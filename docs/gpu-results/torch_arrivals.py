#!/usr/bin/env python3
"""Independent probe for the arrivals comparison (issue: random arrivals).

PyTorch, the same kernels and sizes as the agent's `light` preset on CUDA: a
batched 1-D complex FFT (16 x 4096, complex64) and a 1024^2 fp16 GEMM. Runs
arrive like the agent's: after each run, wait an exponential gap with mean
1/RATE seconds (a Poisson process measured from the end of the previous run),
alternating FFT and GEMM from a random first kernel. Each run is timed on the
host clock from launch to completion (synchronize on an end event recorded
right after the op), and with CUDA events around the op (reference only).

Usage: torch_arrivals.py RATE_HZ SECONDS OUT.jsonl [max_per_kernel] [graph|eager]
Writes one JSON object per run: {"kernel", "ts", "gap_ms", "wall_ms", "gpu_ms"}.

`graph` (default) captures start event, op and end event in one CUDA graph
per kernel and replays it, as a latency-critical caller would, so Python's
eager dispatch (measured at about 0.35 ms per op on the H100, see
docs/gpu-results/README.md) is not inside the host-clock interval; `eager`
calls the op directly.
"""
import json
import random
import sys
import time

import torch

rate = float(sys.argv[1])
secs = float(sys.argv[2])
out_path = sys.argv[3]
cap = int(sys.argv[4]) if len(sys.argv) > 4 else 10**9
mode = sys.argv[5] if len(sys.argv) > 5 else "graph"
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
for _ in range(20):
    for op in ops.values():
        op()
torch.cuda.synchronize()
events = {}
graphs = {}
for name, op in ops.items():
    if mode == "graph":
        st = torch.cuda.Event(enable_timing=True, external=True)
        en = torch.cuda.Event(enable_timing=True, external=True)
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            op()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(g):
            st.record()
            op()
            en.record()
        graphs[name] = g
    else:
        st = torch.cuda.Event(enable_timing=True)
        en = torch.cuda.Event(enable_timing=True)
    events[name] = (st, en)
torch.cuda.synchronize()
kernel = random.choice(["fft", "gemm"])
counts = {"fft": 0, "gemm": 0}
end = time.monotonic() + secs
with open(out_path, "w") as f:
    while time.monotonic() < end and min(counts.values()) < cap:
        gap = random.expovariate(rate)
        time.sleep(gap)
        ts = time.time()
        s, e = events[kernel]
        t0 = time.perf_counter()
        if mode == "graph":
            graphs[kernel].replay()
        else:
            s.record()
            ops[kernel]()
            e.record()
        e.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
        f.write(json.dumps({"kernel": kernel, "ts": ts, "gap_ms": gap * 1e3,
                            "wall_ms": wall, "gpu_ms": s.elapsed_time(e)}) + "\n")
        counts[kernel] += 1
        kernel = "gemm" if kernel == "fft" else "fft"
print(json.dumps({"rate_hz": rate, "mode": mode, "runs": counts}))
