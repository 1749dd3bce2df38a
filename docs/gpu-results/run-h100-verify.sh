#!/usr/bin/env bash
# Follow-up H100 call (after run-h100.sh): (1) the agent with the article
# preset, to verify the self-test's planted corruption is now caught on the
# 4096x4096 FFT; (2) fidelity with jittered arrivals: slicetrace-load and
# PyTorch both sleep uniform(1, 3) ms between runs (instead of exactly 2 ms,
# which phase-locked with the slice rotation), beside 0, 1 and 3 tenants.
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-verify}
HERE=$(cd "$(dirname "$0")" && pwd)
R=$OUT/raw
mkdir -p "$R"
export NODE_NAME=h100-node SLICETRACE_LOG=info
TPIDS=()
tenant() { "$BIN/slicetrace-load" gemm --backend cuda --preset article --duration 0 >/dev/null 2>&1 & TPIDS+=($!); }
stop_tenants() { for p in "${TPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait "${TPIDS[@]}" 2>/dev/null; TPIDS=(); }
"$BIN/slicetrace-agent" run --backend cuda --preset article --metrics-listen "" --data-dir "$OUT/data" --duration 8s >"$R/article.txt" 2>"$R/article.log"
grep -h "self-test" "$R/article.log" | sed 's/\x1b\[[0-9;]*m//g'
for phase in 0 1 3; do
  for i in $(seq 1 "$phase"); do tenant; done
  [ "$phase" -gt 0 ] && sleep 3
  for k in fft gemm; do
    "$BIN/slicetrace-load" "$k" --backend cuda --preset light --duration 6s --period-ms 2 --period-jitter-pct 50 \
      >"$R/load-$k-jitter-t$phase.json" 2>/dev/null
  done
  python3 "$HERE/torch_probe.py" 6 "tenants=$phase" jitter >>"$R/torch-jitter.jsonl" 2>>"$R/torch.log"
  stop_tenants
done
python3 - "$R" <<'PY' | tee "$OUT/summary.md"
import json, sys
R = sys.argv[1]
t = [json.loads(l) for l in open(f"{R}/torch-jitter.jsonl") if l.strip()]
print("| kernel | tenants | source | runs | gpu_ms p50 | gpu_ms p99 | wall_ms p50 | wall_ms p99 | wall p50 ours/torch | wall p99 ours/torch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for k in ("fft", "gemm"):
    for ph in (0, 1, 3):
        o = json.loads(open(f"{R}/load-{k}-jitter-t{ph}.json").read().strip().splitlines()[-1])
        p = next(x for x in t if x["kernel"] == k and x["label"] == f"tenants={ph}")
        print(f"| {k} | {ph} | slicetrace-load | {o['runs']} | {o['gpu_p50_ms']:.4f} | {o['gpu_p99_ms']:.4f} | {o['wall_p50_ms']:.4f} | {o['wall_p99_ms']:.4f} | | |")
        print(f"| {k} | {ph} | pytorch | {p['runs']} | {p['gpu_ms_p50']:.4f} | {p['gpu_ms_p99']:.4f} | {p['wall_ms_p50']:.4f} | {p['wall_ms_p99']:.4f} | {o['wall_p50_ms']/p['wall_ms_p50']:.2f} | {o['wall_p99_ms']/p['wall_ms_p99']:.2f} |")
PY
tar czf "$OUT/results.tar.gz" -C "$OUT" raw && rm -rf "$R" "$OUT/data"
