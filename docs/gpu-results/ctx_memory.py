#!/usr/bin/env python3
"""Where a CUDA context's GPU memory goes, and whether a smaller per-thread
stack limit gives it back without breaking cuFFT and cuBLAS (issue 13).

  ctx_memory.py STACK_BYTES|default [PRINTF_FIFO_BYTES MALLOC_HEAP_BYTES] >> OUT.jsonl

One process on the visible GPU: retain the primary context through the
driver API (as the agent does), read its limits (stack size per thread,
printf FIFO, malloc heap), optionally lower CU_LIMIT_STACK_SIZE, then run a
complex FFT and an fp16 and an fp32 GEMM through PyTorch on that same
primary context and check them against the CPU. After each stage it records
this process's GPU memory as nvidia-smi reports it, so the figures are the
ones an operator sees. One JSON line per stage.
"""
import ctypes
import json
import os
import subprocess
import sys
import time

arg = sys.argv[1] if len(sys.argv) > 1 else "default"
cuda = ctypes.CDLL("libcuda.so.1")
LIMITS = {"stack": 0x00, "printf_fifo": 0x01, "malloc_heap": 0x02}
pid = os.getpid()


def ck(r, what):
    if r != 0:
        raise SystemExit(f"{what} failed: {r}")


def gpu_mib():
    time.sleep(0.3)
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return sum(int(l.split(",")[1]) for l in out.splitlines() if l.split(",")[0].strip() == str(pid))


def limits():
    out = {}
    for k, v in LIMITS.items():
        x = ctypes.c_size_t()
        ck(cuda.cuCtxGetLimit(ctypes.byref(x), v), "cuCtxGetLimit")
        out[k] = x.value
    return out


def emit(stage, **kw):
    print(json.dumps({"arg": arg, "stage": stage, "gpu_mib": gpu_mib(), **limits(), **kw}), flush=True)


ck(cuda.cuInit(0), "cuInit")
dev = ctypes.c_int()
ck(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p()
ck(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ck(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
emit("context")
if arg != "default":
    ck(cuda.cuCtxSetLimit(LIMITS["stack"], ctypes.c_size_t(int(arg))), "cuCtxSetLimit")
    emit("stack_limit_set")
if len(sys.argv) > 3:
    for k, v in (("printf_fifo", sys.argv[2]), ("malloc_heap", sys.argv[3])):
        r = cuda.cuCtxSetLimit(LIMITS[k], ctypes.c_size_t(int(v)))
        emit(f"{k}_set", rc=r)

import torch  # noqa: E402  (after the driver context, so torch reuses it)

torch.cuda.set_device(0)
x = torch.randn(16, 4096, dtype=torch.complex64)
y = torch.fft.fft(x.cuda()).cpu()
ref = torch.fft.fft(x)
emit("fft", ok=bool(torch.allclose(y, ref, rtol=1e-3, atol=1e-2)))
for dt in (torch.float16, torch.float32):
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    c = (a.to(dt).cuda() @ b.to(dt).cuda()).float().cpu()
    r = a.to(dt).float() @ b.to(dt).float()
    rel = float((c - r).norm() / r.norm())
    emit(f"gemm_{str(dt).split('.')[-1]}", ok=rel < 1e-2, rel_error=rel)
torch.cuda.synchronize()
emit("end")
