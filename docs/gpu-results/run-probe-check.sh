#!/usr/bin/env bash
# GPU check of the probe workloads (issue: workspace/probes). Runs on the
# device machine over carried stripped binaries in .gpu/:
#   slicetrace-load fft|gemm alone, then beside 1 and 3 `slicetrace-load gemm`
#   tenants; every run's correctness must come back true.
# Usage (device call): bash docs/gpu-results/run-probe-check.sh
# Writes raw JSON summaries and Parquet under $OUT (or ./out-probe-check).
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-probe-check}
DUR=${DUR:-20s}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
tenants() { # start N gemm tenants (article preset, fp32 4096^2), print pids
  local n=$1; TPIDS=()
  for i in $(seq 1 "$n"); do
    "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 >"$OUT/tenant-$2-$i.json" 2>"$OUT/tenant-$2-$i.log" &
    TPIDS+=($!)
  done
  sleep 3   # let them initialise and reach steady state
}
stop_tenants() { for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait "${TPIDS[@]}" 2>/dev/null; }
for phase in 0 1 3; do
  TPIDS=()
  [ "$phase" -gt 0 ] && tenants "$phase" "p$phase"
  for k in fft gemm; do
    "$BIN/slicetrace-load" "$k" --backend cuda --preset light --duration "$DUR" --period-ms 2 \
      --out "$OUT/load-$k-tenants$phase.parquet" >"$OUT/load-$k-tenants$phase.json" 2>"$OUT/load-$k-tenants$phase.log"
    echo "rc=$? phase=$phase kernel=$k $(cat "$OUT/load-$k-tenants$phase.json")"
  done
  [ "$phase" -gt 0 ] && stop_tenants
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys, glob, os
out = sys.argv[1]
print("| kernel (light preset) | tenants | runs | incorrect | gpu_ms p50 | gpu_ms p99 | wall_ms p50 | wall_ms p99 | wall p99 / alone |")
print("|---|---|---|---|---|---|---|---|---|")
base = {}
for k in ["fft", "gemm"]:
    for ph in [0, 1, 3]:
        p = f"{out}/load-{k}-tenants{ph}.json"
        try:
            j = json.loads(open(p).read().strip().splitlines()[-1])
        except Exception as e:
            print(f"| {k} | {ph} | missing ({e}) |"); continue
        if ph == 0: base[k] = j["wall_p99_ms"]
        ratio = j["wall_p99_ms"] / base[k] if base.get(k) else float("nan")
        print(f"| {k} {j['shape']} | {ph} | {j['runs']} | {j['incorrect']} | {j['gpu_p50_ms']:.4f} | {j['gpu_p99_ms']:.4f} | {j['wall_p50_ms']:.4f} | {j['wall_p99_ms']:.4f} | {ratio:.1f}x |")
PY
