#!/usr/bin/env bash
# The H100 proof, in one device call, on carried stripped binaries in .gpu/
# (slicetrace-agent, slicetrace-load). See docs/gpu-results/README.md.
#   1. probe check: slicetrace-load fft|gemm alone, beside 1 and 3 GEMM
#      tenants, each with graph and with stream submission;
#   2. the article experiment with the agent (light preset, 200 ms):
#      60 s alone -> 3 tenants started at a logged time (detection) for 60 s
#      -> 1 tenant for 60 s;
#   3. fidelity: the same kernel sizes timed by PyTorch in the same phases;
#   4. overhead: a GEMM tenant alone vs beside the agent (default 1 s), 3 pairs;
#   5. the article preset with the agent: 30 s alone, 30 s beside 3 tenants;
#   6. correctness at fp32 and bf16 besides the fp16 of the light preset.
# Raw results are packed into $OUT/results.tar.gz; the summary is printed last.
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-h100}
HERE=$(cd "$(dirname "$0")" && pwd)
R=$OUT/raw
TIMING=${TIMING:-graph}
mkdir -p "$R"
# The agent's configs: the experiment config, and the default config; both
# with the CUDA timing mode under test.
{ cat "$HERE/h100-agent.toml"; printf '\n[probe]\ntiming = "%s"\n' "$TIMING"; } >"$OUT/agent.toml"
printf '[probe]\ntiming = "%s"\n' "$TIMING" >"$OUT/agent-default.toml"
export NODE_NAME=h100-node SLICETRACE_LOG=info
log() { echo "[$(date -u +%H:%M:%S.%3N)] $*" | tee -a "$R/timeline.log"; }
TPIDS=()
tenant() { # name -> starts one article-preset fp32 4096^2 GEMM tenant
  "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 >"$R/tenant-$1.json" 2>"$R/tenant-$1.log" &
  TPIDS+=($!)
}
stop_tenants() { for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait "${TPIDS[@]}" 2>/dev/null; TPIDS=(); }

nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$R/gpu.csv"

# ---- 1. probe check, both submission modes ----
log "probe check"
for phase in 0 1 3; do
  for i in $(seq 1 "$phase"); do tenant "check$phase-$i"; done
  [ "$phase" -gt 0 ] && sleep 3
  for mode in graph stream legacy; do
    for k in fft gemm; do
      "$BIN/slicetrace-load" "$k" --backend cuda --preset light --submit "$mode" --duration 4s --period-ms 2 \
        --out "$R/load-$k-$mode-t$phase.parquet" >"$R/load-$k-$mode-t$phase.json" 2>>"$R/load.log"
    done
  done
  stop_tenants
done

# ---- 2. the article experiment with the agent, and detection ----
log "agent light: start (alone)"
"$BIN/slicetrace-agent" run --config "$OUT/agent.toml" --backend cuda --data-dir "$OUT/data-light" \
  --duration 190s --summary-json "$R/agent-light.json" >"$R/agent-light.txt" 2>"$R/agent-light.log" &
APID=$!
sleep 65
log "start 3 tenants"
T0=$(date +%s.%N)
tenant p3-1; tenant p3-2; tenant p3-3
python3 - "$T0" >"$R/detection.json" <<'PY'
import json, sys, time, urllib.request
t0 = float(sys.argv[1]); first = {}
while time.time() - t0 < 60:
    try:
        txt = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=2).read().decode()
    except Exception:
        time.sleep(0.5); continue
    for line in txt.splitlines():
        if line.startswith("slicetrace_gpu_verdict{") and float(line.rsplit(" ", 1)[-1]) == 1.0:
            for v in ("degraded", "unhealthy"):
                if f'verdict="{v}"' in line:
                    k = line.split('kernel="')[1].split('"')[0]
                    first.setdefault(f"{k}:{v}", round(time.time() - t0, 2))
    if len(first) >= 2 and all(any(x.startswith(k) for x in first) for k in ("fft", "gemm")) and time.time() - t0 > 20:
        break
    time.sleep(0.5)
print(json.dumps({"seconds_to_verdict": first, "window_s": 30, "evaluate_interval_s": 2}))
PY
log "detection: $(cat "$R/detection.json")"
sleep $(python3 -c "import time; print(max(0, 60 - (time.time() - $T0)))")
log "stop 2 tenants (1 left)"
kill -TERM "${TPIDS[1]}" "${TPIDS[2]}"; wait "${TPIDS[1]}" "${TPIDS[2]}" 2>/dev/null
TPIDS=("${TPIDS[0]}")
wait "$APID"; log "agent light done rc=$?"
stop_tenants

# ---- 3. fidelity: PyTorch in the same three conditions ----
for phase in 0 3 1; do
  for i in $(seq 1 "$phase"); do tenant "torch$phase-$i"; done
  [ "$phase" -gt 0 ] && sleep 3
  log "torch tenants=$phase"
  python3 "$HERE/torch_probe.py" 3 "tenants=$phase" >>"$R/torch.jsonl" 2>>"$R/torch.log"
  stop_tenants
done

# ---- 4. overhead on a tenant ----
for pair in 1 2 3; do
  log "overhead pair $pair: tenant alone"
  "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 8s >"$R/ovh-alone-$pair.json" 2>/dev/null
  log "overhead pair $pair: tenant + agent"
  "$BIN/slicetrace-agent" run --config "$OUT/agent-default.toml" --backend cuda --data-dir "$OUT/data-ovh" --metrics-listen "" --duration 14s \
    --summary-json "$R/ovh-agent-$pair.json" >/dev/null 2>"$R/ovh-agent-$pair.log" &
  OPID=$!; sleep 3
  "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 8s >"$R/ovh-with-$pair.json" 2>/dev/null
  wait "$OPID"
done

# ---- 5. the article preset ----
log "agent article: alone"
"$BIN/slicetrace-agent" run --config "$OUT/agent.toml" --backend cuda --preset article --interval 500ms \
  --data-dir "$OUT/data-article" --duration 57s --summary-json "$R/agent-article.json" >"$R/agent-article.txt" 2>"$R/agent-article.log" &
APID=$!; sleep 28
log "agent article: 3 tenants"
tenant a1; tenant a2; tenant a3
wait "$APID"; stop_tenants

# ---- 6. correctness at fp32 and bf16 ----
for p in fp32 bf16; do
  "$BIN/slicetrace-load" gemm --backend cuda --preset light --precision "$p" --duration 5s --out "$R/load-gemm-$p.parquet" >"$R/load-gemm-$p.json" 2>>"$R/load.log"
done
log "done"

python3 "$HERE/summarise_h100.py" "$R" | tee "$OUT/summary.md"
tar czf "$OUT/results.tar.gz" -C "$OUT" raw data-light data-article && rm -rf "$R" "$OUT/data-light" "$OUT/data-article" "$OUT/data-ovh"
