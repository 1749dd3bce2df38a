#!/usr/bin/env python3
"""CPU cost of NVML's per-process utilisation query (the busy_tenants join),
beside the process-list query, through libnvidia-ml directly (ctypes).

    python3 nvml_procutil_cost.py LABEL [N]    -> one JSON line
"""
import ctypes, json, sys, time

N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
nv = ctypes.CDLL("libnvidia-ml.so.1")
assert nv.nvmlInit_v2() == 0
h = ctypes.c_void_p()
assert nv.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == 0


class Sample(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("timeStamp", ctypes.c_ulonglong), ("smUtil", ctypes.c_uint),
                ("memUtil", ctypes.c_uint), ("encUtil", ctypes.c_uint), ("decUtil", ctypes.c_uint)]


def util(since):
    n = ctypes.c_uint(0)
    rc = nv.nvmlDeviceGetProcessUtilization(h, None, ctypes.byref(n), ctypes.c_ulonglong(since))
    if n.value == 0:
        return rc, []
    buf = (Sample * n.value)()
    rc = nv.nvmlDeviceGetProcessUtilization(h, buf, ctypes.byref(n), ctypes.c_ulonglong(since))
    return rc, [(buf[i].pid, buf[i].timeStamp, buf[i].smUtil) for i in range(n.value)]


class Info(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


def procs():
    n = ctypes.c_uint(64)
    buf = (Info * 64)()
    return nv.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), buf)


def cost(f):
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(N):
        f()
        time.sleep(0.005)
    return round((time.process_time() - c0) / N * 1e3, 4)


newest = [0]
def util_incremental():
    rc, s = util(newest[0])
    if s:
        newest[0] = max(t for _, t, _ in s)
rc, first = util(0)
out = {"label": sys.argv[1], "n": N,
       "procutil_since_newest_cpu_ms": cost(util_incremental),
       "procutil_since_0_cpu_ms": cost(lambda: util(0)),
       "process_list_cpu_ms": cost(procs),
       "samples_since_0": len(first), "pids": sorted({p for p, _, _ in first}),
       "now_unix_us": int(time.time() * 1e6), "newest_ts": max([t for _, t, _ in first], default=None)}
print(json.dumps(out))
