#!/usr/bin/env bash
# fleet from rollups vs DuckDB over the same files (issue 23).
# Usage: analysis/bench/rollups_fleet.sh NODES MODE(min|hour) OUTDIR
# Generates rollups directly (gen-rollups, no raw rows), then times
# `slicetrace fleet` (the bench-fast profile, see docs/benchmarks.md
# "Rollups (issue 23)" for the exact build command) and a DuckDB query that
# reads the same files and does the same grouping and sums (it cannot decode DDSketches:
# it collects the window's sketch blobs per GPU, kernel and shape, which is
# a lower bound of what merging them would cost). Raw rows: RESULTS/*.json.
# REUSE=1 keeps OUTDIR's data from an earlier run (same NODES and MODE);
# TAG=x adds "-x" to the result names (e.g. before/after a change).
set -euo pipefail
NODES=${1:-10000}; MODE=${2:-min}; OUT=${3:-/tmp/rollup-bench}
BIN=${BIN:-target/bench-fast/slicetrace}
PY=${PY:-.venv/bin/python}
END=2026-12-07T00:00:00Z
RES=analysis/bench/results/rollups
mkdir -p "$RES"
if [ "$MODE" = hour ]; then
  GEN=(--hours --span-secs 86400); FLEET=(--window 12h --baseline-window 12h)
else
  GEN=(--span-secs 3600); FLEET=(--window 30m --baseline-window 30m)
fi
if [ "${REUSE:-0}" != 1 ] || [ ! -d "$OUT/rollups" ]; then
  rm -rf "$OUT"
  /usr/bin/time -f "gen %e s %M KiB" "$BIN" gen-rollups --out "$OUT" --nodes "$NODES" --end "$END" "${GEN[@]}"
fi
du -sh "$OUT/rollups"
echo "files: $(find "$OUT/rollups" -name '*.parquet' | wc -l); load: $(cut -d' ' -f1-3 /proc/loadavg)"
tag="fleet-${NODES}n-${MODE}${TAG:+-$TAG}"
/usr/bin/time -v "$BIN" fleet "$OUT" "${FLEET[@]}" --until "$END" --format json \
  > "/tmp/$tag.json" 2> "$RES/$tag.time.txt" || true
grep -E "Elapsed|Maximum resident" "$RES/$tag.time.txt"
"$PY" - "$OUT" "/tmp/$tag.json" "$RES/$tag.json" <<'PY'
import json, sys, time, duckdb
root, ours, res = sys.argv[1:4]
r = json.load(open(ours))
t0 = time.time()
n = duckdb.sql(f"""SELECT node, gpu_uuid, kernel, shape, sum(runs), sum(arrivals), sum(incorrect_arrivals),
  sum(hw_throttled_arrivals), bit_or(throttle_reasons), max(tenants), max(last_ts),
  sum(sm_clock_mhz_sum), sum(sm_clock_runs), list(wall_ms_sketch), list(gpu_ms_sketch),
  list(mcycles_sketch), list(event_mcycles_sketch)
  FROM read_parquet('{root}/rollups/**/*.parquet', hive_partitioning=false)
  GROUP BY ALL""").arrow().read_all()
duck = time.time() - t0
out = {"gpus": len(r["gpus"]), "summary": r["summary"], "source": r["source"], "runs": r["runs"],
       "scan": {k: v for k, v in r["scan"].items() if k != "skipped"},
       "duckdb_s": round(duck, 2), "duckdb_groups": n.num_rows}
with open("/proc/loadavg") as f:
    out["loadavg_after"] = f.read().split()[:3]
json.dump(out, open(res, "w"), indent=1)
print(json.dumps(out))
PY
