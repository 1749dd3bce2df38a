#!/usr/bin/env bash
# Issue 19, GPU stamps: one device call, nothing built there.
#
#   bash docs/gpu-results/run-stamps.sh [STEP...]      (default: tier fidelity)
#
#   tier      the GPU test tier: the probe crate's test binaries (built here with
#             `cargo test -p slicetrace-probe --no-run`, copied to .gpu/tests/)
#             run with SLICETRACE_REQUIRE_GPU=1: timer resolution and
#             monotonicity, stamps bracketing the event and host clocks, the
#             calibration's error bound on an idle GPU, planted faults through
#             the real graph, the wait modes, the open path.
#   fidelity  for 0, 1 and 3 tenants (`slicetrace-load gemm --preset article`),
#             FOUR probes at the same time on the same GPU, all Poisson at 5/s:
#               new     this build, default config (GPU stamps, spin-then-block)
#               spin    this build, wait = "spin"
#               before  the previous build (.gpu/old/slicetrace-agent-before),
#                       default config (host clock, spin-then-block)
#               torch   docs/gpu-results/torch_arrivals.py (graph replay, spins)
#             Each phase runs SECS seconds (default 150); the agents' CPU is
#             read from /proc over the same window.
#   overhead  a GEMM tenant alone vs beside the new / the previous agent, in
#             alternating windows of OV_SECS (default 6) s, OV_ROUNDS rounds.
#
# Binaries: .gpu/slicetrace-agent, .gpu/slicetrace-load (this build, release,
# stripped), .gpu/old/slicetrace-agent-before, .gpu/tests/*. Raw files stay
# under /tmp/stamps-raw and are re-packed into $OUT/stamps.tar.gz after every
# step, so a call that hits its time limit still returns what it measured.
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-stamps}
HERE=$(cd "$(dirname "$0")" && pwd)
R=/tmp/stamps-raw
SECS=${SECS:-150}
mkdir -p "$OUT" "$R"
export NODE_NAME=gpu-node SLICETRACE_LOG=info PYTHONUNBUFFERED=1
log() { echo "[$(date -u +%H:%M:%S.%3N) epoch=$(date +%s.%N)] $*" | tee -a "$R/timeline.log"; }
pack() { tar -czf "$OUT/stamps.tar.gz" -C "$R" . ; cp "$R/timeline.log" "$OUT/timeline.txt" 2>/dev/null; }
TPIDS=()
tenant() { # name -> one article-preset fp32 4096^2 GEMM tenant, back to back
  "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 "${@:2}" >"$R/tenant-$1.json" 2>"$R/tenant-$1.log" &
  TPIDS+=($!)
}
stop_tenants() { for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait "${TPIDS[@]}" 2>/dev/null; TPIDS=(); }
cfg() { # name port extra-probe-lines -> config path
  printf '[probe]\nrate_hz = 5\n%b[metrics]\nlisten = "127.0.0.1:%s"\n[occupancy]\nkube_api = "off"\n' "$3" "$2" >"$R/$1.toml"
  echo "$R/$1.toml"
}
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

tier() {
  log "tier: GPU test binaries"
  nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm --format=csv >"$R/gpu.csv"
  local rc=0
  for t in "$BIN"/tests/*; do
    [ -x "$t" ] || continue
    log "tier: $(basename "$t")"
    SLICETRACE_REQUIRE_GPU=1 "$t" --test-threads=1 --nocapture >"$R/tier-$(basename "$t").txt" 2>&1 || rc=1
    grep -E "^test result|GPU-RESULT|FAILED|panicked" "$R/tier-$(basename "$t").txt" | tee -a "$R/timeline.log"
  done
  grep -h GPU-RESULT "$R"/tier-*.txt | sed 's/^GPU-RESULT //' >"$R/tier-results.jsonl"
  log "tier: rc=$rc"
  pack
}

fidelity() {
  local new spin before
  new=$(cfg new 9471 '')
  spin=$(cfg spin 9472 'wait = "spin"\n')
  before=$(cfg before 9473 '')
  for phase in ${PHASES:-0 1 3}; do
    for i in $(seq 1 "$phase"); do tenant "f$phase-$i"; done
    [ "$phase" -gt 0 ] && sleep 3
    local d=$((SECS + 10))
    log "fidelity phase=$phase: start new, spin, before (${d}s)"
    "$BIN/slicetrace-agent" run --config "$new" --backend cuda --data-dir "$R/new-t$phase" --duration "${d}s" \
      --summary-json "$R/new-t$phase.json" >"$R/new-t$phase.txt" 2>"$R/new-t$phase.log" &
    local pn=$!
    "$BIN/slicetrace-agent" run --config "$spin" --backend cuda --data-dir "$R/spin-t$phase" --duration "${d}s" \
      --summary-json "$R/spin-t$phase.json" >"$R/spin-t$phase.txt" 2>"$R/spin-t$phase.log" &
    local ps=$!
    "$BIN/old/slicetrace-agent-before" run --config "$before" --backend cuda --data-dir "$R/before-t$phase" --duration "${d}s" \
      --summary-json "$R/before-t$phase.json" >"$R/before-t$phase.txt" 2>"$R/before-t$phase.log" &
    local pb=$!
    sleep 5
    local t0 n0 s0 b0
    t0=$(date +%s.%N); n0=$(ticks $pn); s0=$(ticks $ps); b0=$(ticks $pb)
    log "fidelity phase=$phase: torch (${SECS}s)"
    python3 "$HERE/torch_arrivals.py" 5 "$SECS" "$R/torch-t$phase.jsonl" 1000000 graph >"$R/torch-t$phase.json" 2>"$R/torch-t$phase.log"
    local t1 n1 s1 b1
    t1=$(date +%s.%N); n1=$(ticks $pn); s1=$(ticks $ps); b1=$(ticks $pb)
    python3 - "$phase" "$t0" "$t1" "$n0" "$n1" "$s0" "$s1" "$b0" "$b1" "$(getconf CLK_TCK)" >>"$R/cpu.jsonl" <<'PY'
import json, sys
ph, t0, t1, n0, n1, s0, s1, b0, b1, hz = sys.argv[1:]
dt = float(t1) - float(t0); hz = float(hz)
pct = lambda a, b: round(100.0 * (float(b) - float(a)) / hz / dt, 3)
print(json.dumps({"tenants": int(ph), "seconds": round(dt, 1), "cpu_pct_new": pct(n0, n1),
                  "cpu_pct_spin": pct(s0, s1), "cpu_pct_before": pct(b0, b1)}))
PY
    tail -n1 "$R/cpu.jsonl" | tee -a "$R/timeline.log"
    wait $pn $ps $pb
    stop_tenants
    grep -h "probe thread stopped" "$R/new-t$phase.log" | tail -n1 | cut -c1-1400 | tee -a "$R/timeline.log"
    pack
  done
  python3 "$HERE/summarise_stamps.py" "$R" | tee "$R/summary.txt"
  pack
}

overhead() {
  local secs=${OV_SECS:-6} rounds=${OV_ROUNDS:-6}
  local new before
  new=$(cfg ov-new 9474 '')
  before=$(cfg ov-before 9475 '')
  tenant ov --out "$R/tenant-ov.parquet"
  sleep 4
  for round in $(seq 1 "$rounds"); do
    for side in off new off before; do
      local ap=""
      case $side in
        new) "$BIN/slicetrace-agent" run --config "$new" --backend cuda --data-dir "$R/ov-new" --duration "$((secs + 6))s" >/dev/null 2>>"$R/ov-new.log" & ap=$! ;;
        before) "$BIN/old/slicetrace-agent-before" run --config "$before" --backend cuda --data-dir "$R/ov-before" --duration "$((secs + 6))s" >/dev/null 2>>"$R/ov-before.log" & ap=$! ;;
      esac
      [ -n "$ap" ] && sleep 4
      log "window $side round=$round start"; sleep "$secs"; log "window $side round=$round end"
      [ -n "$ap" ] && wait "$ap"
    done
    pack
  done
  stop_tenants
  pack
}

[ $# -eq 0 ] && set -- tier fidelity
for step in "$@"; do
  case "$step" in
    tier) tier ;;
    fidelity) fidelity ;;
    overhead) overhead ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
ls -la "$OUT"
