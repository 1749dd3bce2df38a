#!/usr/bin/env bash
# Where the agent's CPU goes on a busy multi-GPU node, what its waits add to
# the host clock, and where a context's GPU memory goes (issue 13). Carried
# stripped binaries in .gpu/: slicetrace-agent and slicetrace-load (this
# version: a tenant opens only its own GPU).
#
# Steps (default: all, in this order; tenants start before `agent`):
#   ctx     GPU memory of a bare primary context with per-thread stack limits
#           of 1024 (the driver's), 256, 64 and 0 bytes, and 0 with a 64 KiB
#           printf FIFO and a 1 MiB malloc heap, then cuFFT and cuBLAS
#           (PyTorch) on that context, checked against the CPU
#           (ctx_memory.py; last GPU, idle);
#   stages  host and GPU memory after each set-up stage of the agent's own
#           backend (slicetrace-load --footprint-stages) with the stack limit
#           at the driver's 1024 B and at 0 B, and planted-fault runs of the
#           FFT and of fp16/fp32/bf16 GEMMs at 0 B (idle);
#   nvml    CPU and wall time per NVML call the agent makes (nvml_cost.py),
#           idle, and again busy once tenants run; back to back, and 200 ms
#           apart as the agent calls (NVML_SPACED_N calls each, default 20:
#           about 40 s per pass);
#   agent   the agent on every GPU, idle, then with 3 tenants on every GPU
#           (AGENT_IDLE=0 skips the idle window; SPIN0=1 adds a busy window
#           with spin_us = 0): per-thread CPU (threads.py)
#           over WINDOW_S after the self-test, the probe threads' per-stage
#           CPU (their "probe thread stopped" log line), memory and the
#           agent's GPU memory per GPU;
#   ab      the process list's age, interleaved: the agent at
#           probe.process_list_max_age_ms = 1000 (the behaviour before the
#           5 s default) and at the default, AB_ROUNDS rounds (default 2,
#           order alternating) with 3 tenants on every GPU, each window as in
#           `agent`;
#   wait    the wait on a contended GPU: light FFT on GPU 0 and GEMM on GPU 1
#           (3 tenants each) at 40 arrivals/s, interleaved in ROUNDS rounds
#           (default 4) of WAIT_S (default 2) seconds per method (spin; spin
#           200 µs then block; spin 200 µs then poll every 50 µs; with TORCH=1
#           also the PyTorch reference, graph replay, which spins), each with
#           the process's CPU over its run loop.
# Everything comes back as $OUT/cpu-profile.tar.gz, re-packed after each step.
# Usage: STEPS="ctx agent" run-cpu-profile.sh [WINDOW_S]   (default 25)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-cpu-profile}
WIN=${1:-25}
STEPS=${STEPS:-ctx stages nvml agent wait}
# The raw files live outside $OUT, so that only the tarball comes back.
R=${RAW:-$(mktemp -d)}; mkdir -p "$R" "$OUT"
NGPU=$(nvidia-smi -L | wc -l)
LAST=$((NGPU - 1))
log() { echo "[$(date -u +%H:%M:%S.%3N)] $*" | tee -a "$R/timeline.log"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
# Packs what is there after every step: a device call returns at most 8
# files and nothing that was only in $OUT/raw when a time limit struck.
pack() { tar -czf "$OUT/cpu-profile.tar.gz.part" -C "$R" . && mv "$OUT/cpu-profile.tar.gz.part" "$OUT/cpu-profile.tar.gz"; }
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.used --format=csv >"$R/gpu.csv"
nproc >"$R/host.txt"

if has ctx; then
  for a in default 256 64 0 "0 65536 1048576"; do
    CUDA_VISIBLE_DEVICES=$LAST python3 "$HERE/ctx_memory.py" $a >>"$R/ctx-memory.jsonl" 2>>"$R/ctx-memory.log"
  done
  log "ctx done"; pack
fi
if has stages; then
  for b in 1024 0; do
    "$BIN/slicetrace-load" gemm --backend cuda --preset light --footprint-stages --cuda-stack-bytes "$b" \
      --device "$LAST" --duration 3s --arrivals-hz 50 >"$R/stages-stack$b.jsonl" 2>"$R/stages-stack$b.log"
  done
  for k in "fft" "gemm --precision fp16" "gemm --precision fp32" "gemm --precision bf16"; do
    "$BIN/slicetrace-load" $k --backend cuda --preset light --cuda-stack-bytes 0 --plant-every 10 \
      --device "$LAST" --duration 2s --arrivals-hz 500 >>"$R/stages-stack0-planted.jsonl" 2>>"$R/stages-stack0.log"
  done
  log "stages done"; pack
fi
if has nvml; then
  python3 "$HERE/nvml_cost.py" "$LAST" idle >>"$R/nvml-cost.jsonl"
  python3 "$HERE/nvml_cost.py" "$LAST" idle-spaced "${NVML_SPACED_N:-20}" 200 >>"$R/nvml-cost.jsonl"
fi

TPIDS=()
start_tenants() {
  for g in $(seq 0 "$LAST"); do
    for i in 1 2 3; do
      "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 --device "$g" >/dev/null 2>>"$R/tenants.log" &
      TPIDS+=($!)
    done
  done
  sleep 12
  log "3 tenants on every GPU"
  nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv >"$R/tenant-apps.csv"
}
# The agent's configs: the defaults with no API server or /metrics, and
# optionally one [probe] key.
agent_cfg() { # file [probe-key-line]
  { printf '[occupancy]\nkube_api = "off"\n[metrics]\nenabled = false\n'
    if [ -n "${2:-}" ]; then printf '[probe]\n%s\n' "$2"; fi; } >"$R/$1"
}
agent_cfg agent.toml
agent_cfg agent-spin0.toml "spin_us = 0"
agent_cfg agent-pl1s.toml "process_list_max_age_ms = 1000"
agent_window() { # tag config
  local tag=$1 cfg=$2
  log "$tag: start"
  "$BIN/slicetrace-agent" run --config "$cfg" --backend cuda --data-dir "$R/data-$tag" \
    --duration "$((WIN + 14))s" >"$R/$tag.txt" 2>"$R/$tag.log" &
  local ap=$!
  sleep 10
  python3 "$HERE/threads.py" "$ap" "$tag:begin" >>"$R/threads.jsonl"
  sleep "$WIN"
  python3 "$HERE/threads.py" "$ap" "$tag:end" >>"$R/threads.jsonl"
  { grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/$ap/status"; grep '^Pss:' "/proc/$ap/smaps_rollup"
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader | grep "^$ap,"; } >"$R/$tag.mem" 2>&1
  wait "$ap"
  log "$tag: end"
  rm -rf "$R/data-$tag"
}
if has agent; then
  [ "${AGENT_IDLE:-1}" = 1 ] && agent_window "idle-g$NGPU" "$R/agent.toml"
  start_tenants
  agent_window "busy-g$NGPU" "$R/agent.toml"
  [ -n "${SPIN0:-}" ] && agent_window "busy-spin0-g$NGPU" "$R/agent-spin0.toml"
  pack
fi
if has ab; then
  [ ${#TPIDS[@]} -eq 0 ] && start_tenants
  for r in $(seq 1 "${AB_ROUNDS:-2}"); do
    if [ $((r % 2)) = 1 ]; then order="pl1s pl5s"; else order="pl5s pl1s"; fi
    for v in $order; do
      cfg="$R/agent.toml"; [ "$v" = pl1s ] && cfg="$R/agent-pl1s.toml"
      agent_window "ab-$v-r$r-g$NGPU" "$cfg"; pack
    done
  done
fi
[ ${#TPIDS[@]} -eq 0 ] && { has nvml || has wait; } && start_tenants
if has nvml; then
  python3 "$HERE/nvml_cost.py" 0 busy >>"$R/nvml-cost.jsonl"
  python3 "$HERE/nvml_cost.py" 0 busy-spaced "${NVML_SPACED_N:-20}" 200 >>"$R/nvml-cost.jsonl"
fi

if has wait; then
  lane() { # gpu kernel
    local g=$1 k=$2 modes=("spin:" "block:--spin-us 200" "poll50:--spin-us 200 --poll-us 50")
    [ -n "${TORCH:-}" ] && modes+=("torch:")
    local n=${#modes[@]} w=${WAIT_S:-2}
    for r in $(seq 1 "${ROUNDS:-4}"); do
      for j in $(seq 0 $((n - 1))); do
        local m=${modes[$(((j + r) % n))]}; local name=${m%%:*} flags=${m#*:}
        if [ "$name" = torch ]; then
          CUDA_VISIBLE_DEVICES=$g python3 "$HERE/torch_arrivals.py" 40 "$w" "$R/wait-$k-torch-r$r.jsonl" >/dev/null 2>>"$R/wait.log"
        else
          CUDA_VISIBLE_DEVICES=$g "$BIN/slicetrace-load" "$k" --backend cuda --preset light --duration "${w}s" \
            --arrivals-hz 40 $flags --out "$R/wait-$k-$name-r$r.parquet" >>"$R/wait-$k.jsonl" 2>>"$R/wait.log"
        fi
      done
    done
  }
  log "wait start"
  lane 0 fft & lane 1 gemm & wait
  log "wait end"; pack
fi
for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
wait "${TPIDS[@]}" 2>/dev/null
pack
cat "$R/timeline.log"
