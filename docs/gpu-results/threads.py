#!/usr/bin/env python3
"""Per-thread CPU of a process, for the agent's CPU profile (issue 13).

  threads.py PID LABEL >> OUT.jsonl

Writes one JSON object: the wall time and, per thread, its name (comm),
utime and stime (seconds) and its voluntary and involuntary context
switches, read from /proc/PID/task/*/{stat,status}. Two snapshots of the
same process bound a window; summarise_cpu_profile.py diffs them.
"""
import json
import os
import sys
import time

pid, label = sys.argv[1], sys.argv[2]
tick = os.sysconf("SC_CLK_TCK")
threads = []
for tid in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        status = open(f"/proc/{pid}/task/{tid}/status").read()
    except OSError:
        continue  # the thread ended between listdir and open
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    f = stat.rsplit(")", 1)[1].split()
    sw = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if "ctxt_switches" in l}
    threads.append({"tid": int(tid), "comm": comm, "utime_s": int(f[11]) / tick, "stime_s": int(f[12]) / tick,
                    "vcs": sw.get("voluntary_ctxt_switches"), "nvcs": sw.get("nonvoluntary_ctxt_switches")})
print(json.dumps({"t": time.time(), "pid": int(pid), "label": label, "threads": threads}))
