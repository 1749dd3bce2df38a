#!/usr/bin/env bash
# Benchmark (not a test): `slicetrace report --by node,kernel` (release build,
# exact percentiles) against DuckDB on the same Parquet files, two ways:
#   duckdb-pct   the percentile-only query: GROUP BY node, kernel with
#                quantile_cont lists of wall_ms, gpu_ms, queue_ms and their
#                maxima (the target of issue 23, part 5);
#   duckdb       the whole report in SQL (count, runs/s, the three clocks'
#                percentiles and maxima, jitter and the tail queue share).
# Alternating runs; prints each run's wall time and peak RSS
# (/usr/bin/time -v), then the medians and the median ratios.
#
# Usage: ROWS=10000000 NODES=20 RUNS=3 analysis/bench/report_vs_duckdb.sh [DATA_DIR]
#   RESULTS            also append each run as a CSV line (tool,seconds,peak_rss_kib) to this file
#   SLICETRACE_BIN     default target/release/slicetrace (cargo build --release -p slicetrace-analysis)
#   SLICETRACE_PYTHON  a python with duckdb (default .venv/bin/python)
#   APPROX=1           also time `report --approx` (one run per round)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SLICETRACE_BIN:-$ROOT/target/release/slicetrace}
PY=${SLICETRACE_PYTHON:-$ROOT/.venv/bin/python}
ROWS=${ROWS:-10000000}
NODES=${NODES:-20}
RUNS=${RUNS:-3}
DIR=${1:-/tmp/slicetrace-bench-$ROWS}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --release -p slicetrace-analysis" >&2; exit 2; }
"$PY" -c 'import duckdb' || { echo "no duckdb in $PY" >&2; exit 2; }

if [ ! -d "$DIR/probes" ]; then
  echo "generating $ROWS rows over $NODES nodes into $DIR" >&2
  /usr/bin/time -f 'gen: %e s, %M KiB' "$BIN" gen-synthetic --rows "$ROWS" --nodes "$NODES" --out "$DIR"
fi
echo "data: $(du -sh "$DIR/probes" | cut -f1), $(find "$DIR/probes" -name '*.parquet' | wc -l) files" >&2

# Data from an older gen-synthetic (without the `arrival` column) must be
# generated again: DuckDB cannot name a column no file has.
# The same result as `report --by node,kernel`: count, runs/s, p50/p95/p99/p99.9/max
# of wall_ms, gpu_ms and queue_ms (exact, quantile_cont), jitter and tail queue share.
cat > "$WORK/duck.py" <<'EOF'
import duckdb, sys
root = sys.argv[1]
src = f"read_parquet('{root}/probes/**/*.parquet', hive_partitioning=false, union_by_name=true)"
qs = "[0.5, 0.95, 0.99, 0.999]"
# report counts arrival runs only (slicetrace_schema::ARRIVAL_SQL); so does this.
sql = f"""
WITH f AS (SELECT node, kernel, ts, wall_ms, gpu_ms, queue_ms FROM {src}
           WHERE coalesce(arrival, burst_seq = 0 AND kernel = 'fft')),
g AS (SELECT node, kernel, count(*) AS n,
             count(*) / ((epoch_ns(max(ts)) - epoch_ns(min(ts))) / 1e9) AS runs_per_s,
             quantile_cont(wall_ms, {qs}) AS wq, max(wall_ms) AS wmax,
             quantile_cont(gpu_ms, {qs}) AS gq, max(gpu_ms) AS gmax,
             quantile_cont(queue_ms, {qs}) AS qq, max(queue_ms) AS qmax
      FROM f GROUP BY node, kernel),
t AS (SELECT f.node, f.kernel, sum(f.queue_ms) / sum(f.wall_ms) AS tail_queue_share
      FROM f JOIN g USING (node, kernel)
      WHERE f.wall_ms >= g.wq[3] AND f.queue_ms IS NOT NULL GROUP BY ALL)
SELECT g.*, g.wq[3] / g.wq[1] AS jitter, t.tail_queue_share
FROM g LEFT JOIN t USING (node, kernel) ORDER BY node, kernel
"""
rows = duckdb.sql(sql).fetchall()
print(len(rows), "groups")
EOF

# The percentile-only query: what DuckDB needs for the same percentiles and
# maxima, and nothing else (no filter, count, time span or tail share).
cat > "$WORK/duck_pct.py" <<'EOF'
import duckdb, sys
root = sys.argv[1]
src = f"read_parquet('{root}/probes/**/*.parquet', hive_partitioning=false, union_by_name=true)"
qs = "[0.5, 0.95, 0.99, 0.999]"
sql = f"""
SELECT node, kernel,
       quantile_cont(wall_ms, {qs}), max(wall_ms),
       quantile_cont(gpu_ms, {qs}), max(gpu_ms),
       quantile_cont(queue_ms, {qs}), max(queue_ms)
FROM {src} GROUP BY node, kernel ORDER BY node, kernel
"""
rows = duckdb.sql(sql).fetchall()
print(len(rows), "groups")
EOF

measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" > "$WORK/out" 2> "$WORK/time" || { cat "$WORK/time" >&2; exit 1; }
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$WORK/time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time")
  printf '%s\t%s\t%s\n' "$name" "$secs" "$rss" | tee -a "$WORK/results" >&2
  if [ -n "${RESULTS:-}" ]; then printf '%s,%s,%s\n' "$name" "$secs" "$rss" >> "$RESULTS"; fi
}

echo -e "tool\tseconds\tpeak_rss_kib" >&2
for i in $(seq 1 "$RUNS"); do
  measure slicetrace "$BIN" report "$DIR" --by node,kernel --format csv
  measure duckdb-pct "$PY" "$WORK/duck_pct.py" "$DIR"
  measure duckdb "$PY" "$WORK/duck.py" "$DIR"
  if [ "${APPROX:-0}" = 1 ]; then
    measure slicetrace-approx "$BIN" report "$DIR" --by node,kernel --format csv --approx
  fi
done

"$PY" - "$WORK/results" <<'EOF'
import statistics, sys
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
st = [float(r[1]) for r in rows if r[0] == 'slicetrace']
dk = [float(r[1]) for r in rows if r[0] == 'duckdb']
dp = [float(r[1]) for r in rows if r[0] == 'duckdb-pct']
ap = [float(r[1]) for r in rows if r[0] == 'slicetrace-approx']
rss = lambda n: max(int(r[2]) for r in rows if r[0] == n) / 1024
ratios = [a / b for a, b in zip(st, dk)]
print(f"slicetrace median {statistics.median(st):.2f} s, peak RSS {rss('slicetrace'):.0f} MiB")
print(f"duckdb-pct median {statistics.median(dp):.2f} s, peak RSS {rss('duckdb-pct'):.0f} MiB")
print(f"duckdb     median {statistics.median(dk):.2f} s, peak RSS {rss('duckdb'):.0f} MiB")
if ap:
    print(f"approx     median {statistics.median(ap):.2f} s, peak RSS {rss('slicetrace-approx'):.0f} MiB")
print(f"ratio slicetrace/duckdb: median {statistics.median(ratios):.2f} (runs: {', '.join(f'{r:.2f}' for r in ratios)})")
pr = [a / b for a, b in zip(st, dp)]
print(f"ratio slicetrace/duckdb-pct: median {statistics.median(pr):.2f} (runs: {', '.join(f'{r:.2f}' for r in pr)}); "
      f"ratio of medians {statistics.median(st) / statistics.median(dp):.2f}")
EOF
