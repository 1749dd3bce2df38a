#!/usr/bin/env bash
# Benchmark (not a test): issue 22's headline. `slicetrace fleet --window 1h`
# on a synthetic fleet of NODES (2,000) nodes x GPUS (8) GPUs at RATE (5)
# arrivals/s per GPU in the agent's file layout, with the minute rollups the
# agent writes beside the raw rows (gen-synthetic --fleet-layout writes both
# from the same runs), against DuckDB answering the same question over the
# raw files of the range.
#
# The data (gen_fleet.sh): END's day (midnight to END) has a raw file per
# node every 5 minutes and a rollup file per node every 15 minutes; the last
# DENSE_SECS before END are at RATE arrivals/s per GPU (3600: the checked
# hour only; 7200: the hour and the 1-hour baseline period before it), the
# rest SPARSE rows per GPU per raw file. The OLD_DAYS days before it: one raw
# file per node every OLD_FILE_SECS, no rollups (neither path lists them).
#
# Measured, runs alternating, each under /usr/bin/time -v with
# /proc/loadavg before and after:
#   fleet --window 1h            (the default: from rollups)        RUNS times
#   DuckDB, the same aggregates  (approx_quantile, over the raw files whose
#                                 names fall in the range)          RUNS times
#   fleet --exact --window 1h    (raw rows), once, if EXACT=1, under
#                                 EXACT_TIMEOUT seconds
# and how far fleet's quantiles and counts are from DuckDB's.
#
# Usage: analysis/bench/fleet_2000.sh [DATA_DIR]
#   SLICETRACE_BIN     default target/bench-fast/slicetrace
#   SLICETRACE_PYTHON  a python with duckdb (default .venv/bin/python)
#   KEEP=1             keep DATA_DIR afterwards (default: delete it)
#   DUCK_MEM           DuckDB's memory_limit (default 12GB)
#   DUCK_SLICE         nodes per DuckDB query (default 250: see duck.py)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SLICETRACE_BIN:-$ROOT/target/bench-fast/slicetrace}
PY=${SLICETRACE_PYTHON:-$ROOT/.venv/bin/python}
NODES=${NODES:-2000}
GPUS=${GPUS:-8}
RATE=${RATE:-5}
OLD_DAYS=${OLD_DAYS:-6}
DENSE_SECS=${DENSE_SECS:-3600}
SPARSE=${SPARSE:-1}
OLD_FILE_SECS=${OLD_FILE_SECS:-86400}
END=${END:-2026-01-07T13:00:00Z}
RUNS=${RUNS:-2}
EXACT=${EXACT:-1}
EXACT_TIMEOUT=${EXACT_TIMEOUT:-900}
EXACT_ARGS=${EXACT_ARGS:-}
DUCK_MEM=${DUCK_MEM:-12GB}
DUCK_SLICE=${DUCK_SLICE:-250}
DIR=${1:-/tmp/slicetrace-fleet-$NODES}
OUT=${OUT:-$ROOT/docs/bench/fleet-$NODES-nodes-rollups.jsonl}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"' EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --profile bench-fast -p slicetrace-analysis --no-default-features --bin slicetrace" >&2; exit 2; }
"$PY" -c 'import duckdb' || { echo "no duckdb in $PY" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

ROLLUPS=1
. "$ROOT/analysis/bench/gen_fleet.sh"
gen_fleet "$OLD_DAYS"
for t in probes rollups; do
  files=$(find "$DIR/$t" -name '*.parquet' | wc -l)
  bytes=$(du -sb "$DIR/$t" | cut -f1)
  echo "data $t: $bytes bytes, $files files" >&2
  echo "{\"step\":\"data $t\",\"files\":$files,\"bytes\":$bytes}" >> "$OUT"
done

end_s=$(date -u -d "$END" +%s)
W0=$(date -u -d "@$((end_s - 3600))" +%Y-%m-%dT%H:%M:%SZ)
B0=$(date -u -d "@$((end_s - 7200))" +%Y-%m-%dT%H:%M:%SZ)
DAY=$(date -u -d "$END" +%Y-%m-%d)

# DuckDB: per GPU, kernel and shape, the window's runs, p99 wall_ms, p50
# gpu_ms, p50 SM clock, p50 Mcycles, and the quiet baseline's runs, p50/p99
# wall_ms and p50 Mcycles in the hour before. Its files: those of the day
# whose names (first row's time) start in [B0 - 5 min, END), the pruning
# fleet does by name done for it (a glob of the day would open 13 h of
# files). approx_quantile (DuckDB's t-digest): exact quantile_cont over
# 288 M+ rows needs more memory than this machine has. `ts` is
# TIMESTAMPTZ_NS in DuckDB 2.0: the bounds are cast to it (comparing with a
# TIMESTAMPTZ literal is a binder error).
cat > "$WORK/duck.py" <<'EOF'
import duckdb, glob, json, os, sys
from datetime import datetime, timezone, timedelta
root, day, b0, w0, w1, out, mem = sys.argv[1:8]
slice_nodes = int(sys.argv[8])
p = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
lo, hi = p(b0) - timedelta(minutes=5), p(w1)
files = []
for f in glob.glob(f"{root}/probes/date={day}/*/part-*.parquet"):
    t = datetime.strptime(os.path.basename(f)[5:21], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    if lo <= t < hi:
        files.append(f)
con = duckdb.connect()
con.execute(f"SET memory_limit = '{mem}'")
con.execute("SET threads = 2")
con.execute("SET TimeZone = 'UTC'")
w = f"ts >= CAST('{w0}' AS TIMESTAMPTZ_NS) AND ts < CAST('{w1}' AS TIMESTAMPTZ_NS)"
b = f"ts >= CAST('{b0}' AS TIMESTAMPTZ_NS) AND ts < CAST('{w0}' AS TIMESTAMPTZ_NS) AND gpu_processes = 0"
arrival = "coalesce(arrival, burst_seq = 0 AND kernel = 'fft')"
mc = "gpu_ms * sm_clock_mhz / 1000.0"
tab = lambda t: (t.read_all() if hasattr(t, "read_all") else t).to_pylist()
# DuckDB's approx_quantile holds about 0.6 MB per group and query here
# (measured on 111 nodes): 32,000 groups do not fit in this machine's RAM
# in one query. So the question is asked per slice of SLICE nodes (every
# group is one node's), each slice as two queries (the window, then the
# baseline period; one query with FILTERs holds both sets of digests at
# once), one after the other; each file is read by one slice. Every file
# has the same schema: no union_by_name (it reads every schema).
by_node = {}
for f in files:
    by_node.setdefault(os.path.basename(os.path.dirname(f)), []).append(f)
nodes = sorted(by_node)
rows = {}
for i in range(0, len(nodes), slice_nodes):
    part = [f for n in nodes[i:i + slice_nodes] for f in by_node[n]]
    src = f"read_parquet({part!r}, hive_partitioning=false)"
    window = tab(con.sql(f"""
    SELECT node, gpu_uuid, kernel, shape,
      count(*) AS w_runs,
      approx_quantile(wall_ms, 0.99) AS w_wall_p99,
      approx_quantile(gpu_ms, 0.5) AS w_gpu_p50,
      approx_quantile(sm_clock_mhz, 0.5) AS w_clock_p50,
      approx_quantile({mc}, 0.5) AS w_event_p50
    FROM {src} WHERE {w} AND {arrival} GROUP BY ALL""").arrow())
    base = tab(con.sql(f"""
    SELECT node, gpu_uuid, kernel, shape,
      count(*) AS b_runs,
      approx_quantile(wall_ms, 0.5) AS b_wall_p50,
      approx_quantile(wall_ms, 0.99) AS b_wall_p99,
      approx_quantile({mc}, 0.5) AS b_event_p50
    FROM {src} WHERE {b} AND {arrival} GROUP BY ALL""").arrow())
    for r in window + base:
        rows.setdefault((r["node"], r["gpu_uuid"], r["kernel"], r["shape"]), {}).update(r)
rows = list(rows.values())
with open(out, "w") as f:
    json.dump(rows, f, default=str)
print(len(files), "files,", len(rows), "groups")
EOF

# fleet's counts and quantiles against DuckDB's, and the verdicts.
cat > "$WORK/agree.py" <<'EOF'
import json, sys
fleet = json.load(open(sys.argv[1]))
duck = {(r["node"], r["gpu_uuid"], r["kernel"]): r for r in json.load(open(sys.argv[2]))}
worst = {"wall_p99": [0.0, None], "gpu_p50": [0.0, None]}
n = counts_equal = 0
for g in fleet["gpus"]:
    for k in g["kernels"]:
        key = (g["node"], g["gpu_uuid"], k["kernel"])
        d = duck.get(key)
        if d is None or k["wall_p99_ms"] is None:
            continue
        n += 1
        counts_equal += d["w_runs"] == k["window_runs"]
        for name, ours, theirs in [("wall_p99", k["wall_p99_ms"], d["w_wall_p99"]),
                                   ("gpu_p50", k["gpu_p50_ms"], d["w_gpu_p50"])]:
            e = abs(ours / theirs - 1)
            if e > worst[name][0]:
                worst[name] = [e, "/".join(key)]
print(json.dumps({"groups_compared": n, "groups_duckdb": len(duck),
                  "window_counts_equal": counts_equal, "max_rel_diff": worst,
                  "summary": fleet["summary"], "source": fleet["source"]["kind"]}))
EOF

# run NAME CMD...: /usr/bin/time -v, load before and after, one JSON line.
run() {
  local name=$1; shift
  local before after
  before=$(cut -d' ' -f1-3 /proc/loadavg)
  /usr/bin/time -v "$@" > "$WORK/out" 2> "$WORK/err" || true
  after=$(cut -d' ' -f1-3 /proc/loadavg)
  "$PY" - "$name" "$WORK/err" "$WORK/out" "$before" "$after" >> "$OUT" <<'EOF'
import json, re, sys
name, err, out, before, after = sys.argv[1:6]
e = open(err).read()
g = lambda pat: (re.search(pat, e) or [None, None])[1]
wall = g(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)")
secs = None
if wall:
    parts = [float(x) for x in wall.split(":")]
    secs = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
rec = {"step": name, "wall_s": secs, "user_s": float(g(r"User time \(seconds\): (\S+)") or 0),
       "sys_s": float(g(r"System time \(seconds\): (\S+)") or 0),
       "max_rss_kib": int(g(r"Maximum resident set size \(kbytes\): (\d+)") or 0),
       "exit": int(g(r"Exit status: (\d+)") or -1), "loadavg_before": before, "loadavg_after": after}
try:
    d = json.load(open(out))
    rec["scan"] = d.get("scan")
    rec["summary"] = d.get("summary")
    rec["runs"] = d.get("runs")
    rec["source"] = d.get("source")
except Exception:
    rec["stdout_tail"] = open(out).read()[-300:]
print(json.dumps(rec))
sys.stderr.write(f"{name}: {secs} s, {rec['max_rss_kib']} KiB, exit {rec['exit']}, load {before} -> {after}\n")
EOF
}

for i in $(seq 1 "$RUNS"); do
  run "fleet --window 1h (default) run $i" "$BIN" fleet "$DIR" --until "$END" --window 1h --format json
  cp "$WORK/out" "$WORK/fleet.json"
  run "duckdb approx_quantile run $i" "$PY" "$WORK/duck.py" "$DIR" "$DAY" "$B0" "$W0" "$END" "$WORK/duck.json" "$DUCK_MEM" "$DUCK_SLICE"
  echo "duckdb: $(cat "$WORK/out")" >&2
done
agree=$("$PY" "$WORK/agree.py" "$WORK/fleet.json" "$WORK/duck.json" || echo null)
echo "agreement: $agree" >&2
echo "{\"step\":\"fleet (default) vs duckdb approx_quantile, window\",\"detail\":$agree}" >> "$OUT"
if [ "$EXACT" = 1 ]; then
  # shellcheck disable=SC2086
  run "fleet --exact --window 1h $EXACT_ARGS" timeout "$EXACT_TIMEOUT" "$BIN" fleet "$DIR" --until "$END" --window 1h --exact $EXACT_ARGS --format json
  if [ -s "$WORK/out" ]; then
    agree=$("$PY" "$WORK/agree.py" "$WORK/out" "$WORK/duck.json" || echo null)
    echo "{\"step\":\"fleet --exact vs duckdb approx_quantile, window\",\"detail\":$agree}" >> "$OUT"
  fi
fi
echo "raw numbers: $OUT" >&2
