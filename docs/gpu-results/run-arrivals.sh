#!/usr/bin/env bash
# Random arrivals on the H100: the agent against an independent PyTorch probe,
# the agent's overhead on a tenant, detection, and correctness over >=1e5 runs.
# Runs on carried stripped binaries in .gpu/ (slicetrace-agent, slicetrace-load).
#
#   run-arrivals.sh fidelity RATE_HZ SECONDS   agent then torch, 0/1/3 tenants
#   run-arrivals.sh overhead SECS RATE...      GEMM tenant alone vs beside the agent (ABAB, 5 pairs per rate)
#   run-arrivals.sh detect                     3 tenants start at a logged time; time to contended/over-shared
#   run-arrivals.sh correctness RUNS           fp32/fp16/bf16 (+tf32), planted corrupt+skip every 100 runs
# Several steps can be chained: run-arrivals.sh fidelity 25 84 -- overhead 4 1.25 5 20
# Raw results go to $OUT/arrivals-<step>.tar.gz.
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-arrivals}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
export NODE_NAME=h100-node SLICETRACE_LOG=info
log() { echo "[$(date -u +%H:%M:%S.%3N) epoch=$(date +%s.%N)] $*" | tee -a "$OUT/timeline.log"; }
TPIDS=()
tenant() { # name -> one article-preset fp32 4096^2 GEMM tenant, back to back
  "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 "${@:2}" >"$R/tenant-$1.json" 2>"$R/tenant-$1.log" &
  TPIDS+=($!)
}
stop_tenants() { for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait "${TPIDS[@]}" 2>/dev/null; TPIDS=(); }
agent_cfg() { # rate -> config file
  cat >"$R/agent-$1.toml" <<TOML
[probe]
rate_hz = $1
[metrics]
listen = "127.0.0.1:${METRICS_PORT:-9464}"
[occupancy]
kube_api = "off"
[health]
window_ms = 30000
evaluate_interval_ms = 2000
TOML
  echo "$R/agent-$1.toml"
}
pack() { tar -czf "$OUT/arrivals-$1.tar.gz" -C "$R" . ; rm -rf "$R"; }

fidelity() { # RATE SECS   (env PHASES="0 1 3", CAP=max runs per kernel for torch)
  local rate=$1 secs=$2
  PHASES=${PHASES:-0 1 3}
  R=$OUT/raw-fidelity-$rate-${PHASES// /}; mkdir -p "$R"
  nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm --format=csv >"$R/gpu.csv"
  local cfg; cfg=$(agent_cfg "$rate")
  for phase in ${PHASES:-0 1 3}; do
    for i in $(seq 1 "$phase"); do tenant "f$phase-$i"; done
    [ "$phase" -gt 0 ] && sleep 3
    log "fidelity rate=$rate phase=$phase: agent"
    "$BIN/slicetrace-agent" run --config "$cfg" --backend cuda --data-dir "$R/agent-t$phase" \
      --duration "$((secs + 4))s" --summary-json "$R/agent-t$phase.json" >"$R/agent-t$phase.txt" 2>"$R/agent-t$phase.log"
    log "fidelity rate=$rate phase=$phase: torch"
    python3 "$HERE/torch_arrivals.py" "$rate" "$secs" "$R/torch-t$phase.jsonl" "${CAP:-1000000}" "${TORCH_MODE:-graph}" >"$R/torch-t$phase.json" 2>"$R/torch-t$phase.log"
    stop_tenants
  done
  pack "fidelity-$rate-${PHASES// /}"
}

overhead() { # SECS RATE...
  local secs=$1; shift
  R=$OUT/raw-overhead; mkdir -p "$R"
  log "overhead: one GEMM tenant, agent off/on in alternating windows"
  tenant ov --out "$R/tenant-ov.parquet"
  sleep 3
  for rate in "$@"; do
    local cfg; cfg=$(agent_cfg "$rate")
    for pair in 1 2 3 4 5; do
      log "window A rate=$rate pair=$pair start"; sleep "$secs"; log "window A rate=$rate pair=$pair end"
      "$BIN/slicetrace-agent" run --config "$cfg" --backend cuda --data-dir "$R/agent-ov" \
        --duration "$((secs + 5))s" >/dev/null 2>>"$R/agent-ov.log" &
      local ap=$!
      sleep 3
      log "window B rate=$rate pair=$pair start"; sleep "$secs"; log "window B rate=$rate pair=$pair end"
      wait "$ap"
    done
  done
  stop_tenants
  pack overhead
}

detect() {
  R=$OUT/raw-detect; mkdir -p "$R"
  local cfg; cfg=$(agent_cfg 5)
  "$BIN/slicetrace-agent" run --config "$cfg" --backend cuda --data-dir "$R/agent-detect" \
    --duration 75s --summary-json "$R/agent-detect.json" >"$R/agent-detect.txt" 2>"$R/agent-detect.log" &
  local ap=$!
  sleep 35
  log "detect: start 3 tenants"
  local t0; t0=$(date +%s.%N)
  tenant d1; tenant d2; tenant d3
  python3 - "$t0" "${METRICS_PORT:-9464}" >"$R/detection.json" <<'PY'
import json, sys, time, urllib.request
t0 = float(sys.argv[1]); first = {}; samples = []
while time.time() - t0 < 36:
    try:
        txt = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/metrics", timeout=2).read().decode()
    except Exception:
        time.sleep(0.5); continue
    for line in txt.splitlines():
        if line.startswith(("slicetrace_gpu_verdict{", "slicetrace_gpu_contention{")) and float(line.rsplit(" ", 1)[-1]) == 1.0:
            k = line.split('kernel="')[1].split('"')[0]
            state = line.split('verdict="')[1].split('"')[0] if "verdict=" in line else line.split('state="')[1].split('"')[0]
            samples.append((round(time.time() - t0, 2), k, state))
            first.setdefault(f"{k}:{state}", round(time.time() - t0, 2))
    time.sleep(0.5)
print(json.dumps({"seconds_to_state": first, "window_s": 30, "evaluate_interval_s": 2, "samples": samples[-40:]}))
PY
  log "detect: $(head -c 300 "$R/detection.json")"
  wait "$ap"; stop_tenants
  pack detect
}

correctness() { # RUNS per precision
  local runs=$1
  R=$OUT/raw-correctness; mkdir -p "$R"
  for prec in fp32 fp16 bf16; do
    log "correctness gemm $prec"
    "$BIN/slicetrace-load" gemm --backend cuda --preset light --precision "$prec" --spin-us 200 \
      --duration 120s --plant-every 100 --max-runs "$runs" >"$R/gemm-$prec.json" 2>"$R/gemm-$prec.log"
  done
  log "correctness gemm fp32 tf32 math + NVIDIA_TF32_OVERRIDE=1"
  "$BIN/slicetrace-load" gemm --backend cuda --preset light --precision fp32 --fp32-math tf32 --spin-us 200 \
    --duration 120s --plant-every 100 --max-runs "$runs" >"$R/gemm-fp32-tf32.json" 2>"$R/gemm-fp32-tf32.log"
  NVIDIA_TF32_OVERRIDE=1 "$BIN/slicetrace-load" gemm --backend cuda --preset light --precision fp32 --spin-us 200 \
    --duration 120s --plant-every 100 --max-runs "$runs" >"$R/gemm-fp32-override.json" 2>"$R/gemm-fp32-override.log"
  log "correctness fft"
  "$BIN/slicetrace-load" fft --backend cuda --preset light --spin-us 200 \
    --duration 120s --plant-every 100 --max-runs "$runs" >"$R/fft.json" 2>"$R/fft.log"
  pack correctness
}

while [ $# -gt 0 ]; do
  step=$1; shift
  args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  case "$step" in
    fidelity) fidelity "${args[@]}" ;;
    overhead) overhead "${args[@]}" ;;
    detect) detect ;;
    correctness) correctness "${args[@]}" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
cp "$OUT/timeline.log" "$OUT/timeline.txt" 2>/dev/null
ls -la "$OUT"
