#!/usr/bin/env bash
# The agent's cost on a GPU node (issue: no busy-waiting, host-memory budget).
# Carried stripped binaries in .gpu/: slicetrace-agent, slicetrace-load (this
# version) and slicetrace-agent-before (main before the change).
#
#   1. breakdown: host RSS (VmRSS, RssAnon, RssFile, Pss) and GPU memory after
#      each set-up stage of one probe backend (context, cuFFT plan, cuBLAS
#      handle, buffers, warm-up, graphs, steady), with the preset's 1 MiB
#      cuBLAS workspace and with cuBLAS's default;
#   2. the agent at its default configuration on 1, 2 and all GPUs
#      (CUDA_VISIBLE_DEVICES), before and after: idle; 3 tenants on GPU 0;
#      3 tenants on every GPU. CPU = (utime+stime)/wall over each phase; memory
#      sampled every second; the agent's GPU memory from nvidia-smi;
#   3. the timing floor on an idle GPU: light FFT and GEMM with the new wait
#      (spin 200 µs then block), with block-only (spin 0) and with spin.
# Usage: run-footprint.sh PHASE_SECS [GPU_COUNTS...]   (default 30 s; 1 2 all)
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-footprint}
SECS=${1:-30}; shift || true
COUNTS=("${@:-1 2 all}")
R=$OUT/raw; mkdir -p "$R"
NGPU=$(nvidia-smi -L | wc -l)
log() { echo "[$(date -u +%H:%M:%S.%3N)] $*" | tee -a "$R/timeline.log"; }
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.used --format=csv >"$R/gpu.csv"
TPIDS=()
tenants_on() { # gpu index, count
  for i in $(seq 1 "$2"); do
    "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 --device "$1" >/dev/null 2>>"$R/tenants.log" &
    TPIDS+=($!)
  done
}
stop_tenants() { for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait "${TPIDS[@]}" 2>/dev/null; TPIDS=(); }

# ---- 1. breakdown ----
for ws in ${BREAKDOWN:-preset default}; do
  [ "$ws" = skip ] && continue
  extra=(); [ "$ws" = default ] && extra=(--cublas-default-workspace)
  "$BIN/slicetrace-load" gemm --backend cuda --preset light --footprint-stages --spin-us 200 \
    --duration 5s --arrivals-hz 50 "${extra[@]}" >"$R/breakdown-$ws.jsonl" 2>"$R/breakdown-$ws.log"
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader >>"$R/breakdown-$ws.log"
done

# ---- 2. the agent ----
sample() { # pid file: one JSON line per second until the pid exits
  local pid=$1 f=$2
  while kill -0 "$pid" 2>/dev/null; do
    python3 - "$pid" >>"$f" <<'PY' 2>/dev/null
import json, os, sys, subprocess, time
pid = sys.argv[1]
st = open(f"/proc/{pid}/status").read()
g = lambda k: int(next(l.split()[1] for l in st.splitlines() if l.startswith(k)))
pss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:"))
stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
tick = os.sysconf("SC_CLK_TCK")
gpu = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                     capture_output=True, text=True).stdout
mib = sum(int(l.split(",")[1]) for l in gpu.splitlines() if l.split(",")[0].strip() == pid)
print(json.dumps({"t": time.time(), "vm_rss_kib": g("VmRSS:"), "rss_anon_kib": g("RssAnon:"),
                  "rss_file_kib": g("RssFile:"), "pss_kib": pss, "threads": g("Threads:"),
                  "cpu_s": (int(stat[11]) + int(stat[12])) / tick, "utime_s": int(stat[11]) / tick,
                  "stime_s": int(stat[12]) / tick, "gpu_mib": mib}))
PY
    sleep 1
  done
}
# Tenants spend ~9 s setting up (the article GEMM's host reference) before
# they contend: each phase is marked only once they are running.
LAG=${LAG:-10}
for which in ${AGENTS:-after before}; do
  agent="$BIN/slicetrace-agent"; [ "$which" = before ] && agent="$BIN/slicetrace-agent-before"
  for n in ${COUNTS[@]}; do
    [ "$n" = all ] && n=$NGPU
    [ "$n" -gt "$NGPU" ] && continue
    vis=$(seq -s, 0 $((n - 1)))
    tag=$which-g$n
    printf '[metrics]\nlisten = "127.0.0.1:9464"\n[occupancy]\nkube_api = "off"\n' >"$R/agent.toml"
    log "$tag: start"
    CUDA_VISIBLE_DEVICES=$vis "$agent" run --config "$R/agent.toml" --backend cuda --data-dir "$R/data-$tag" \
      --duration "$((3 * SECS + 2 * LAG + 12))s" >"$R/$tag.txt" 2>"$R/$tag.log" &
    ap=$!
    sample "$ap" "$R/$tag.jsonl" &
    sp=$!
    sleep 10; log "$tag: idle"
    sleep "$SECS"; log "$tag: starting 3 tenants on GPU 0"
    tenants_on 0 3; sleep "$LAG"; log "$tag: 3 tenants on GPU 0"
    sleep "$SECS"; log "$tag: starting 3 tenants on every GPU"
    for g in $(seq 1 $((n - 1))); do tenants_on "$g" 3; done
    sleep "$LAG"; log "$tag: 3 tenants on every GPU"
    sleep "$SECS"; log "$tag: end"
    wait "$ap"; wait "$sp"; stop_tenants
    rm -rf "$R/data-$tag"
  done
done

# ---- 3. timing floor on an idle GPU ----
[ -n "${NO_FLOOR:-}" ] || for mode in "spin200:--spin-us 200" "block:--spin-us 0" "spin:"; do
  name=${mode%%:*}; flags=${mode#*:}
  for k in fft gemm; do
    "$BIN/slicetrace-load" "$k" --backend cuda --preset light --duration 8s --arrivals-hz 200 $flags \
      --out "$R/floor-$k-$name.parquet" >"$R/floor-$k-$name.json" 2>>"$R/floor.log"
  done
done
tar -czf "$OUT/footprint.tar.gz" -C "$R" .
cat "$R/timeline.log"
