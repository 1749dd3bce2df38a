#!/usr/bin/env bash
# Rollup percentiles against exact ones on >= 1e7 raw rows (issue 23).
# gen-synthetic 1e7 rows (20 nodes), rollup --from-raw, then report from
# the rollups (raw rows moved aside) against DuckDB's exact quantile_cont and
# the exact rank quantile (the value DDSketch's guarantee is stated for),
# per node and kernel. Writes RESULTS/accuracy.json (every group's numbers).
set -euo pipefail
OUT=${1:-/tmp/rollup-acc}
BIN=${BIN:-target/bench-fast/slicetrace}
PY=${PY:-.venv/bin/python}
RES=analysis/bench/results/rollups
mkdir -p "$RES"
rm -rf "$OUT"
/usr/bin/time -f "gen-synthetic %e s" "$BIN" gen-synthetic --rows 10000000 --nodes 20 --out "$OUT"
/usr/bin/time -f "rollup --from-raw %e s %M KiB" "$BIN" rollup "$OUT" --from-raw > "$RES/accuracy-fromraw.json"
mv "$OUT/probes" "$OUT/raw"
/usr/bin/time -f "report from rollups %e s %M KiB" "$BIN" report "$OUT" --by node,kernel --format json > /tmp/acc-ours.json
"$PY" - "$OUT/raw" /tmp/acc-ours.json "$RES/accuracy.json" <<'PY'
import json, sys, duckdb, time
raw, ours, res = sys.argv[1:4]
ours = {(r["node"], r["kernel"]): r for r in json.load(open(ours))}
arr = "coalesce(arrival, burst_seq = 0 AND kernel = 'fft')"
t0 = time.time()
rows = duckdb.sql(f"""SELECT node, kernel, count(*),
  quantile_cont(wall_ms, 0.5), quantile_cont(wall_ms, 0.99), quantile_cont(wall_ms, 0.999),
  quantile_disc(wall_ms, 0.5), quantile_disc(wall_ms, 0.99), quantile_disc(wall_ms, 0.999),
  quantile_cont(gpu_ms, 0.5), quantile_cont(gpu_ms, 0.99), quantile_cont(queue_ms, 0.99)
  FROM read_parquet('{raw}/**/*.parquet', hive_partitioning=true) WHERE {arr} GROUP BY ALL""").fetchall()
duck = time.time() - t0
out, worst = [], {"vs_quantile_cont": 0.0}
for node, kernel, n, w50, w99, w999, d50, d99, d999, g50, g99, q99 in rows:
    o = ours[(node, kernel)]
    e = {"node": node, "kernel": kernel, "n": n, "runs_rollups": o["runs"]}
    for name, exact in [("wall_p50_ms", w50), ("wall_p99_ms", w99), ("wall_p999_ms", w999),
                        ("gpu_p50_ms", g50), ("gpu_p99_ms", g99), ("queue_p99_ms", q99)]:
        err = abs(o[name] - exact) / abs(exact)
        e[name] = {"exact": exact, "rollups": o[name], "rel_err": err}
        worst["vs_quantile_cont"] = max(worst["vs_quantile_cont"], err)
    out.append(e)
summary = {"groups": len(out), "raw_rows_counted": sum(e["n"] for e in out),
           "largest_rel_err": worst["vs_quantile_cont"], "duckdb_s": round(duck, 2),
           "counts_equal": all(e["n"] == e["runs_rollups"] for e in out)}
json.dump({"summary": summary, "groups": out}, open(res, "w"), indent=1)
print(json.dumps(summary))
PY
