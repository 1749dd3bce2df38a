#!/usr/bin/env bash
# run-arrivals.sh steps in parallel, one GPU each, on a 4-GPU machine: the
# GPUs are independent (time-slicing is per GPU), so each lane sees only its
# own tenants. Lanes: GPU 0 fidelity at the high rate; GPU 1 overhead then
# fidelity at the default rate; GPU 2 detection then correctness.
# Everything comes back as one tarball, $OUT/arrivals-x4.tar.gz.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-./out-arrivals-x4}
mkdir -p "$OUT/lanes"
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,clocks.max.sm --format=csv >"$OUT/lanes/gpu.csv"
lane() { # gpu step...
  local g=$1; shift
  (export CUDA_VISIBLE_DEVICES=$g METRICS_PORT=$((9470 + g)) OUT=$OUT/lanes/gpu$g
   bash "$HERE/run-arrivals.sh" "$@") >"$OUT/lanes/lane$g.log" 2>&1 &
}
lane 0 fidelity "${HI_RATE:-40}" "${HI_SECS:-62}"
lane 1 overhead "${OV_SECS:-4}" 1.25 5 20 -- fidelity 5 "${LO_SECS:-30}"
lane 2 detect -- correctness "${CORR_RUNS:-100000}"
wait
tar -czf "$OUT/arrivals-x4.tar.gz" -C "$OUT" lanes
cat "$OUT"/lanes/gpu*/timeline.log
