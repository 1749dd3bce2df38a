#!/usr/bin/env python3
"""Independent probe for the arrivals comparison (issue: random arrivals).

PyTorch, the same kernels and sizes as the agent's `light` preset on CUDA: a
batched 1-D complex FFT (16 x 4096, complex64) and a 1024^2 fp16 GEMM. Runs
arrive like the agent's: after each run, wait an exponential gap with mean
1/RATE seconds (a Poisson process measured from the end of the previous run),
alternating FFT and GEMM from a random first kernel. Each run is timed on the
host clock from launch to completion (synchronize on an end event recorded
right after the op), and with CUDA events around the op (reference only).

Usage: torch_arrivals.py RATE_HZ SECONDS OUT.jsonl [max_per_kernel]
Writes one JSON object per run: {"kernel", "ts", "gap_ms", "wall_ms", "gpu_ms"}.
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
s = torch.cuda.Event(enable_timing=True)
e = torch.cuda.Event(enable_timing=True)
kernel = random.choice(["fft", "gemm"])
counts = {"fft": 0, "gemm": 0}
end = time.monotonic() + secs
with open(out_path, "w") as f:
    while time.monotonic() < end and min(counts.values()) < cap:
        gap = random.expovariate(rate)
        time.sleep(gap)
        ts = time.time()
        t0 = time.perf_counter()
        s.record()
        ops[kernel]()
        e.record()
        e.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
        f.write(json.dumps({"kernel": kernel, "ts": ts, "gap_ms": gap * 1e3,
                            "wall_ms": wall, "gpu_ms": s.elapsed_time(e)}) + "\n")
        counts[kernel] += 1
        kernel = "gemm" if kernel == "fft" else "fft"
print(json.dumps({"rate_hz": rate, "runs": counts}))
