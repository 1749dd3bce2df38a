#!/usr/bin/env bash
# Measures the agent's steady-state resources, on the CPU backend (no GPU
# needed) or, with BACKEND=cuda, on a GPU node.
# Usage: [BACKEND=cpu|cuda] docs/bench/agent_resources.sh DURATION_S RATE_HZ OUT_DIR [AGENT_BIN]
#   e.g. docs/bench/agent_resources.sh 600 5 /tmp/bench-5hz target/release/slicetrace-agent
# RATE_HZ is the mean Poisson arrival rate per GPU (probe.rate_hz; 5 is the
# default). Samples every 10 s: VmRSS, RssAnon and Pss (KiB), cumulative CPU
# time (utime+stime), open file descriptors. Prints the median RSS and
# RssAnon, CPU% over the steady state (after the first 30 s), RSS/fd growth,
# and Parquet bytes per row.
set -euo pipefail
DUR=${1:?duration seconds}; RATE=${2:?rate hz}; OUT=${3:?out dir}
BACKEND=${BACKEND:-cpu}
BIN=${4:-target/release/slicetrace-agent}
PY=${SLICETRACE_PYTHON:-.venv/bin/python}
rm -rf "$OUT"; mkdir -p "$OUT"
"$BIN" run --backend "$BACKEND" --rate-hz "$RATE" --data-dir "$OUT/data" --metrics-listen "" \
  --duration "${DUR}s" >"$OUT/agent.out" 2>"$OUT/agent.log" &
PID=$!
TCK=$(getconf CLK_TCK)
echo "t_s,rss_kib,cpu_s,fds,rss_anon_kib,pss_kib" >"$OUT/samples.csv"
T0=$(date +%s.%N)
while kill -0 "$PID" 2>/dev/null; do
  if [ -r /proc/$PID/status ]; then
    rss=$(awk '/VmRSS/{print $2}' /proc/$PID/status 2>/dev/null || echo "")
    cpu=$(awk -v t="$TCK" '{print ($14+$15)/t}' /proc/$PID/stat 2>/dev/null || echo "")
    fds=$(ls /proc/$PID/fd 2>/dev/null | wc -l)
    anon=$(awk '/RssAnon/{print $2}' /proc/$PID/status 2>/dev/null || echo "")
    pss=$(awk '/^Pss:/{print $2}' /proc/$PID/smaps_rollup 2>/dev/null || echo "")
    now=$(date +%s.%N)
    [ -n "$rss" ] && echo "$(awk -v a="$now" -v b="$T0" "BEGIN{print a-b}"),$rss,$cpu,$fds,$anon,$pss" >>"$OUT/samples.csv"
  fi
  sleep 10
done
wait "$PID" || true
"$PY" - "$OUT" <<'PY'
import csv, glob, os, statistics, sys
out = sys.argv[1]
rows = [r for r in csv.DictReader(open(f"{out}/samples.csv")) if r["rss_kib"]]
steady = [r for r in rows if float(r["t_s"]) >= 30] or rows
rss = [int(r["rss_kib"]) for r in steady]
a, b = steady[0], steady[-1]
cpu_pct = 100 * (float(b["cpu_s"]) - float(a["cpu_s"])) / max(1e-9, float(b["t_s"]) - float(a["t_s"]))
files = glob.glob(f"{out}/data/probes/**/*.parquet", recursive=True)
nbytes = sum(os.path.getsize(f) for f in files)
nrows = 0
try:
    import pyarrow.parquet as pq
    nrows = sum(pq.read_metadata(f).num_rows for f in files)
except ImportError:
    pass
anon = [int(r["rss_anon_kib"]) for r in steady if r.get("rss_anon_kib")]
print(f"samples={len(rows)} median_rss_mib={statistics.median(rss)/1024:.1f} "
      f"median_rss_anon_mib={statistics.median(anon)/1024 if anon else float('nan'):.1f} "
      f"rss_first_mib={int(rows[0]['rss_kib'])/1024:.1f} rss_last_mib={int(rows[-1]['rss_kib'])/1024:.1f} "
      f"cpu_pct={cpu_pct:.2f} fds_first={rows[0]['fds']} fds_last={rows[-1]['fds']} "
      f"parquet_files={len(files)} rows={nrows} bytes_per_row={nbytes / max(1, nrows):.1f}")
PY
