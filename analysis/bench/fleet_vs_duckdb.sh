#!/usr/bin/env bash
# Benchmark (not a test): `slicetrace fleet --window 1h` (release build) on a
# synthetic fleet in the agent's file layout (a file per node every 5
# minutes), and the same question asked of DuckDB over the same files.
#
# The data: NODES nodes × GPUS GPUs. END's day (midnight to END) has a file
# per node every 5 minutes, the last DENSE_SECS before END at RATE arrivals/s
# per GPU (the window and the default 1-hour baseline period before it), the
# rest small (SPARSE rows per GPU per file). The DAYS-1 days before it are
# small files too, one per node every OLD_FILE_SECS (default 300, the agent's
# rotation; larger values save generation time, and `fleet` never lists those
# partitions anyway). Runs alternate slicetrace and DuckDB; each prints wall
# time and peak RSS (/usr/bin/time -v). Raw numbers go to OUT (JSON lines).
# A DATA_DIR that already has probes/ is used as it is (no generation).
# The data has no rollups unless ROLLUPS=1 (then `fleet` answers from them:
# see fleet_2000.sh), so this measures the raw path.
#
# Usage: NODES=200 RUNS=3 analysis/bench/fleet_vs_duckdb.sh [DATA_DIR]
#   SLICETRACE_BIN     default target/release/slicetrace
#   SLICETRACE_PYTHON  a python with duckdb (default .venv/bin/python)
#   KEEP=1             keep DATA_DIR afterwards (default: delete it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SLICETRACE_BIN:-$ROOT/target/release/slicetrace}
PY=${SLICETRACE_PYTHON:-$ROOT/.venv/bin/python}
NODES=${NODES:-200}
GPUS=${GPUS:-8}
RATE=${RATE:-5}
DAYS=${DAYS:-7}
DENSE_SECS=${DENSE_SECS:-7200}
SPARSE=${SPARSE:-1}
OLD_FILE_SECS=${OLD_FILE_SECS:-300}
END=${END:-2026-01-07T13:00:00Z}
RUNS=${RUNS:-3}
DIR=${1:-/tmp/slicetrace-fleet-bench-$NODES}
OUT=${OUT:-$ROOT/docs/bench/fleet-$NODES-nodes.jsonl}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"' EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --release -p slicetrace-analysis" >&2; exit 2; }
"$PY" -c 'import duckdb' || { echo "no duckdb in $PY" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

ROLLUPS=${ROLLUPS:-0}
. "$ROOT/analysis/bench/gen_fleet.sh"
gen_fleet $((DAYS - 1))
files=$(find "$DIR/probes" -name '*.parquet' | wc -l)
bytes=$(du -sb "$DIR/probes" | cut -f1)
echo "data: $bytes bytes, $files files" >&2
echo "{\"step\":\"data\",\"files\":$files,\"bytes\":$bytes}" >> "$OUT"

# The same question for DuckDB: per GPU, kernel and shape, the window's
# counted runs, p99 wall_ms, p50 gpu_ms, p50 SM clock, p50 Mcycles, and the
# quiet baseline's p50/p99 wall_ms and p50 Mcycles in the hour before.
# DuckDB is pointed at the day's partition (as a person would write it) and
# filters on ts; quantiles exact (quantile_cont).
cat > "$WORK/duck.py" <<'EOF'
import duckdb, sys
root, day, b0, w0, w1 = sys.argv[1:6]
src = f"read_parquet('{root}/probes/date={day}/*/*.parquet', hive_partitioning=false, union_by_name=true)"
w = f"ts >= TIMESTAMPTZ '{w0}'"
b = f"ts < TIMESTAMPTZ '{w0}' AND gpu_processes = 0"
mc = "gpu_ms * sm_clock_mhz / 1000.0"
sql = f"""
SELECT node, gpu_uuid, kernel, shape,
  count(*) FILTER (WHERE {w}) AS w_runs,
  quantile_cont(wall_ms, 0.99) FILTER (WHERE {w}) AS w_wall_p99,
  quantile_cont(gpu_ms, 0.5) FILTER (WHERE {w}) AS w_gpu_p50,
  quantile_cont(sm_clock_mhz, 0.5) FILTER (WHERE {w}) AS w_clock_p50,
  quantile_cont({mc}, 0.5) FILTER (WHERE {w}) AS w_event_p50,
  count(*) FILTER (WHERE {b}) AS b_runs,
  quantile_cont(wall_ms, 0.5) FILTER (WHERE {b}) AS b_wall_p50,
  quantile_cont(wall_ms, 0.99) FILTER (WHERE {b}) AS b_wall_p99,
  quantile_cont({mc}, 0.5) FILTER (WHERE {b}) AS b_event_p50
FROM {src}
WHERE ts >= TIMESTAMPTZ '{b0}' AND ts < TIMESTAMPTZ '{w1}'
  AND coalesce(arrival, burst_seq = 0 AND kernel = 'fft')
GROUP BY ALL
"""
rel = duckdb.sql(sql)
cols = rel.columns
rows = rel.fetchall()
import json
with open(sys.argv[6], "w") as f:
    json.dump([dict(zip(cols, r)) for r in rows], f, default=str)
print(len(rows), "groups")
EOF

# How far slicetrace's t-digest quantiles are from DuckDB's exact ones.
cat > "$WORK/agree.py" <<'EOF'
import json, sys
fleet = json.load(open(sys.argv[1]))
duck = {(r["node"], r["gpu_uuid"], r["kernel"]): r for r in json.load(open(sys.argv[2]))}
worst = {"wall_p99": 0.0, "gpu_p50": 0.0}
n = 0
for g in fleet["gpus"]:
    for k in g["kernels"]:
        d = duck.get((g["node"], g["gpu_uuid"], k["kernel"]))
        if d is None or k["wall_p99_ms"] is None:
            continue
        n += 1
        assert d["w_runs"] == k["window_runs"], (d, k)
        worst["wall_p99"] = max(worst["wall_p99"], abs(k["wall_p99_ms"] / d["w_wall_p99"] - 1))
        worst["gpu_p50"] = max(worst["gpu_p50"], abs(k["gpu_p50_ms"] / d["w_gpu_p50"] - 1))
print(json.dumps({"groups_compared": n, "groups_duckdb": len(duck), "max_rel_diff": worst}))
EOF

end_s=$(date -u -d "$END" +%s)
W0=$(date -u -d "@$((end_s - 3600))" +%Y-%m-%dT%H:%M:%SZ)
B0=$(date -u -d "@$((end_s - 7200))" +%Y-%m-%dT%H:%M:%SZ)
DAY=$(date -u -d "$END" +%Y-%m-%d)

for i in $(seq 1 "$RUNS"); do
  /usr/bin/time -v "$BIN" fleet "$DIR" --until "$END" --window 1h --format json \
    > "$WORK/fleet.json" 2> "$WORK/fleet.err" || true
  code=$(grep -o 'Exit status: [0-9]*' "$WORK/fleet.err" | grep -o '[0-9]*$' || echo "?")
  wall=$(grep 'Elapsed (wall clock)' "$WORK/fleet.err" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$WORK/fleet.err" | awk '{print $NF}')
  scan=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["scan"]; s.pop("skipped"); print(json.dumps({"scan": s, "summary": d["summary"], "gpus": len(d["gpus"]), "runs": d["runs"]}))' "$WORK/fleet.json")
  echo "slicetrace run $i: $wall, $rss KiB, exit $code" >&2
  echo "{\"step\":\"slicetrace fleet --window 1h\",\"run\":$i,\"wall\":\"$wall\",\"max_rss_kib\":$rss,\"exit\":$code,\"detail\":$scan}" >> "$OUT"

  /usr/bin/time -v "$PY" "$WORK/duck.py" "$DIR" "$DAY" "$B0" "$W0" "$END" "$WORK/duck.json" \
    > "$WORK/duck.out" 2> "$WORK/duck.err"
  wall=$(grep 'Elapsed (wall clock)' "$WORK/duck.err" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$WORK/duck.err" | awk '{print $NF}')
  echo "duckdb run $i: $wall, $rss KiB, $(cat "$WORK/duck.out")" >&2
  echo "{\"step\":\"duckdb same question\",\"run\":$i,\"wall\":\"$wall\",\"max_rss_kib\":$rss,\"out\":\"$(cat "$WORK/duck.out")\"}" >> "$OUT"
done
agree=$("$PY" "$WORK/agree.py" "$WORK/fleet.json" "$WORK/duck.json")
echo "agreement: $agree" >&2
echo "{\"step\":\"slicetrace t-digest vs duckdb exact, window\",\"detail\":$agree}" >> "$OUT"

# The window alone (no baseline period): what --window 1h reads by itself.
/usr/bin/time -v "$BIN" fleet "$DIR" --until "$END" --window 1h --baseline-window 0s --format json \
  > "$WORK/fleet0.json" 2> "$WORK/fleet0.err" || true
wall=$(grep 'Elapsed (wall clock)' "$WORK/fleet0.err" | awk '{print $NF}')
rss=$(grep 'Maximum resident set size' "$WORK/fleet0.err" | awk '{print $NF}')
echo "slicetrace --baseline-window 0s: $wall, $rss KiB" >&2
echo "{\"step\":\"slicetrace fleet --window 1h --baseline-window 0s\",\"wall\":\"$wall\",\"max_rss_kib\":$rss}" >> "$OUT"
echo "raw numbers: $OUT" >&2
