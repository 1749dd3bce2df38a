#!/usr/bin/env bash
# Benchmark (not a test): two builds of `slicetrace report --by node,kernel`,
# each on the data its own gen-synthetic wrote, each beside DuckDB's
# percentile-only query on the same files, interleaved in every round so
# that both face the same load (the shared machine's load drifts).
#
# Usage: RUNS=5 analysis/bench/report_before_after.sh BEFORE_BIN BEFORE_DIR AFTER_BIN AFTER_DIR [OUT.csv]
#   SLICETRACE_PYTHON  a python with duckdb (default .venv/bin/python)
# Prints and appends round,tool,data,seconds,peak_rss_kib lines; then the
# medians and the median per-round ratios to DuckDB on the same data.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${SLICETRACE_PYTHON:-$ROOT/.venv/bin/python}
RUNS=${RUNS:-5}
[ $# -ge 4 ] || { sed -n 2,11p "$0" >&2; exit 2; }
BB=$1 BD=$2 AB=$3 AD=$4
OUT=${5:-$(mktemp)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/duck_pct.py" <<'PY'
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
print(len(duckdb.sql(sql).fetchall()), "groups")
PY
measure() { # round, tool, data, command...
  local r=$1 tool=$2 data=$3; shift 3
  /usr/bin/time -v "$@" > "$WORK/out" 2> "$WORK/time" || { cat "$WORK/time" >&2; exit 1; }
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$WORK/time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time")
  echo "$r,$tool,$data,$secs,$rss" | tee -a "$OUT"
}
for r in $(seq 1 "$RUNS"); do
  measure "$r" slicetrace before "$BB" report "$BD" --by node,kernel --format csv
  measure "$r" duckdb-pct before "$PY" "$WORK/duck_pct.py" "$BD"
  measure "$r" slicetrace after "$AB" report "$AD" --by node,kernel --format csv
  measure "$r" duckdb-pct after "$PY" "$WORK/duck_pct.py" "$AD"
done
"$PY" - "$OUT" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0] != "round"]
t = lambda tool, data: {r[0]: float(r[3]) for r in rows if r[1] == tool and r[2] == data}
for data in ("before", "after"):
    s, d = t("slicetrace", data), t("duckdb-pct", data)
    ratios = [s[k] / d[k] for k in s if k in d]
    print(f"{data}: slicetrace median {statistics.median(s.values()):.2f} s, duckdb-pct median "
          f"{statistics.median(d.values()):.2f} s, ratio median of rounds {statistics.median(ratios):.2f} "
          f"({', '.join(f'{x:.2f}' for x in ratios)})")
PY
