#!/usr/bin/env python3
"""CPU and wall time of each NVML call the agent makes, on one GPU (issue 13).

  nvml_cost.py GPU_INDEX LABEL [ITERS] [GAP_MS] >> OUT.jsonl

Calls each NVML function ITERS times (default 300) through ctypes on the
device with that index, GAP_MS apart (default 0: back to back), and writes
one JSON line per function with the median wall time and the mean
thread-CPU time per call, in microseconds. Back-to-back calls may be served
from NVML's or the driver's caches; the agent calls about every 200 ms, so
run it with GAP_MS=200 (and fewer ITERS) too.
Run it on an idle and on a busy GPU: the probe reads the SM clock and the
throttle reasons before and after every run, and the full sample at most
once a second.
"""
import ctypes
import json
import statistics
import sys
import time

idx, label = int(sys.argv[1]), sys.argv[2]
iters = int(sys.argv[3]) if len(sys.argv) > 3 else 300
gap = float(sys.argv[4]) / 1e3 if len(sys.argv) > 4 else 0.0
nvml = ctypes.CDLL("libnvidia-ml.so.1")
assert nvml.nvmlInit_v2() == 0
dev = ctypes.c_void_p()
assert nvml.nvmlDeviceGetHandleByIndex_v2(idx, ctypes.byref(dev)) == 0
uuid = ctypes.create_string_buffer(96)
assert nvml.nvmlDeviceGetUUID(dev, uuid, 96) == 0
u32, u64 = ctypes.c_uint(), ctypes.c_ulonglong()
util = (ctypes.c_uint * 2)()
mem = (ctypes.c_ulonglong * 3)()
procs = (ctypes.c_ubyte * (64 * 40))()
count = ctypes.c_uint()


def running():
    count.value = 64
    return nvml.nvmlDeviceGetComputeRunningProcesses_v3(dev, ctypes.byref(count), procs)


def by_uuid():
    h = ctypes.c_void_p()
    return nvml.nvmlDeviceGetHandleByUUID(uuid, ctypes.byref(h))


calls = {
    "clock_sm": lambda: nvml.nvmlDeviceGetClockInfo(dev, 1, ctypes.byref(u32)),
    "throttle_reasons": lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(dev, ctypes.byref(u64)),
    "clock_mem": lambda: nvml.nvmlDeviceGetClockInfo(dev, 2, ctypes.byref(u32)),
    "utilization": lambda: nvml.nvmlDeviceGetUtilizationRates(dev, util),
    "power": lambda: nvml.nvmlDeviceGetPowerUsage(dev, ctypes.byref(u32)),
    "temperature": lambda: nvml.nvmlDeviceGetTemperature(dev, 0, ctypes.byref(u32)),
    "memory_info": lambda: nvml.nvmlDeviceGetMemoryInfo(dev, mem),
    "running_processes": running,
    "handle_by_uuid": by_uuid,
}
for name, f in calls.items():
    rc = f()
    walls, cpus = [], []
    for _ in range(iters):
        if gap:
            time.sleep(gap)
        c = time.thread_time()
        t = time.perf_counter()
        f()
        walls.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - c)
    cpu = sum(cpus) / iters
    print(json.dumps({"label": label, "gpu": idx, "call": name, "rc": rc, "iters": iters, "gap_ms": gap * 1e3,
                      "wall_us_p50": statistics.median(walls) * 1e6, "cpu_us_mean": cpu * 1e6}), flush=True)
