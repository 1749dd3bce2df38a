#!/usr/bin/env bash
# Multi-GPU node run (needs a machine with 2-8 GPUs; not lent in the session
# that wrote it, so NOT RUN yet). Runs on carried stripped binaries in .gpu/:
#   1. the agent on every GPU for 70 s with no tenants;
#   2. the agent on every GPU for 70 s with 3 `slicetrace-load gemm` tenants
#      pinned to GPU 0 only (CUDA_VISIBLE_DEVICES=0);
#   3. the agent on GPU 0 only for 40 s (devices = [0]) to compare its CPU and
#      RSS with one GPU against N GPUs.
# Keeps the machine's NCCL/NVLink variables as they are (this run needs no NCCL).
# Afterwards, here, on the returned results.tar.gz:
#   slicetrace report data --by gpu_uuid,kernel,gpu_processes
#   slicetrace fleet data --window 1h      # must flag GPU 0 alone
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-multi}
R=$OUT/raw
mkdir -p "$R"
export NODE_NAME=multi-gpu-node SLICETRACE_LOG=info
log() { echo "[$(date -u +%H:%M:%S.%3N)] $*" | tee -a "$R/timeline.log"; }
nvidia-smi --query-gpu=index,name,uuid --format=csv | tee "$R/gpus.csv"
NGPU=$(nvidia-smi -L | wc -l)
sample() { # pid name -> appends "t,rss_kib,cpu_s" every 5 s until the pid exits
  local pid=$1 f=$R/$2-resources.csv tck; tck=$(getconf CLK_TCK)
  echo "t,rss_kib,cpu_s" >"$f"
  while kill -0 "$pid" 2>/dev/null; do
    awk -v t="$(date +%s)" -v tck="$tck" 'FNR==NR && /VmRSS/ {r=$2; next} FNR!=NR {print t "," r "," ($14+$15)/tck}' \
      "/proc/$pid/status" "/proc/$pid/stat" >>"$f" 2>/dev/null
    sleep 5
  done
}
printf '[probe]\ninterval_ms = 200\n[metrics]\nlisten = ""\n[occupancy]\nkube_api = "off"\n' >"$OUT/all.toml"
printf 'devices = [0]\n[probe]\ninterval_ms = 200\n[metrics]\nlisten = ""\n[occupancy]\nkube_api = "off"\n' >"$OUT/one.toml"

log "phase quiet: agent on all $NGPU GPUs"
"$BIN/slicetrace-agent" run --config "$OUT/all.toml" --backend cuda --data-dir "$OUT/data" --duration 70s \
  --summary-json "$R/quiet.json" >"$R/quiet.txt" 2>"$R/quiet.log" &
A=$!; sample $A quiet-all & wait $A

log "phase contended: 3 tenants pinned to GPU 0"
T=()
for i in 1 2 3; do
  CUDA_VISIBLE_DEVICES=0 "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 >"$R/tenant-$i.json" 2>/dev/null &
  T+=($!)
done
sleep 3
"$BIN/slicetrace-agent" run --config "$OUT/all.toml" --backend cuda --data-dir "$OUT/data" --duration 70s \
  --summary-json "$R/contended.json" >"$R/contended.txt" 2>"$R/contended.log" &
A=$!; sample $A contended-all & wait $A
kill -TERM "${T[@]}"; wait "${T[@]}" 2>/dev/null

log "one GPU only, for CPU/RSS comparison"
"$BIN/slicetrace-agent" run --config "$OUT/one.toml" --backend cuda --data-dir "$OUT/data-one" --duration 40s \
  --summary-json "$R/one.json" >"$R/one.txt" 2>"$R/one.log" &
A=$!; sample $A one-gpu & wait $A
log "done"

python3 - "$R" <<'PY' | tee "$OUT/summary.md"
import csv, json, sys
R = sys.argv[1]
def load(n):
    try: return json.load(open(f"{R}/{n}.json"))
    except Exception as e: return []
q, c = load("quiet"), load("contended")
print("| gpu | kernel | wall p99 quiet (ms) | wall p99 contended (ms) | ratio | gpu p99 quiet | gpu p99 contended |")
print("|---|---|---|---|---|---|---|")
for a in sorted(q, key=lambda r: (r["gpu_index"], r["kernel"])):
    if a["tenants"] not in (0, None): continue
    b = [r for r in c if r["gpu_uuid"] == a["gpu_uuid"] and r["kernel"] == a["kernel"]]
    b = max(b, key=lambda r: r["runs"]) if b else None
    if b: print(f"| {a['gpu_index']} | {a['kernel']} | {a['wall_ms_p99']:.4f} | {b['wall_ms_p99']:.4f} | {b['wall_ms_p99']/a['wall_ms_p99']:.2f} | {a['gpu_ms_p99']:.4f} | {b['gpu_ms_p99']:.4f} |")
def res(n):
    rows = list(csv.DictReader(open(f"{R}/{n}-resources.csv")))
    rows = [r for r in rows if r["rss_kib"]]
    if len(rows) < 2: return None
    a, b = rows[1], rows[-1]
    cpu = 100 * (float(b["cpu_s"]) - float(a["cpu_s"])) / max(1, int(b["t"]) - int(a["t"]))
    return max(int(r["rss_kib"]) for r in rows) / 1024, cpu
for n in ("quiet-all", "contended-all", "one-gpu"):
    r = res(n)
    if r: print(f"- {n}: peak RSS {r[0]:.1f} MiB, CPU {r[1]:.1f}% of one core")
PY
tar czf "$OUT/results.tar.gz" -C "$OUT" raw data data-one && rm -rf "$R" "$OUT/data" "$OUT/data-one"
