#!/usr/bin/env bash
# Soak test of the agent (issue 8; not in CI): runs it on the CPU backend at
# a 100 ms interval for SOAK_SECS (default 1 h) and samples its RSS
# (VmRSS, KiB) and open file handles (/proc/PID/fd) into a CSV: one row at
# start, one a minute, one at the end. The goal is RSS growth <= 1 MB and no
# handle growth between the start (after warm-up) and the end.
#
#   cargo build --workspace --bins --release   # or debug: set SLICETRACE_BIN
#   docs/soak.sh [OUT_DIR]
#
# Environment: SOAK_SECS (3600), SOAK_WARMUP_SECS (120: the "start" sample
# is taken after the OTLP queue, histograms and first rotation have filled),
# SOAK_INTERVAL (100ms), SLICETRACE_BIN (target/release/slicetrace-agent),
# SOAK_OTLP_ENDPOINT (unset: no OTLP; set it to soak the exporter too).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/soak-$(date -u +%Y%m%dT%H%M%SZ)}"
secs="${SOAK_SECS:-3600}"
warmup="${SOAK_WARMUP_SECS:-120}"
interval="${SOAK_INTERVAL:-100ms}"
bin="${SLICETRACE_BIN:-$root/target/release/slicetrace-agent}"
[ -x "$bin" ] || { echo "soak: $bin not built (cargo build --workspace --bins --release)" >&2; exit 2; }

mkdir -p "$out/data"
csv="$out/soak.csv"
args=(run --backend cpu --interval "$interval" --data-dir "$out/data" --metrics-listen 127.0.0.1:0
      --duration "$((secs + warmup + 30))s" --node-name soak)
if [ -n "${SOAK_OTLP_ENDPOINT:-}" ]; then args+=(--otlp-endpoint "$SOAK_OTLP_ENDPOINT"); fi

"$bin" "${args[@]}" >"$out/agent.stdout" 2>"$out/agent.log" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT

sample() { # label
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ),$1,$(( $(date +%s) - t0 )),$rss,$fds" >>"$csv"
}

echo "utc,label,elapsed_s,rss_kib,open_fds" >"$csv"
t0=$(date +%s)
sleep "$warmup"
kill -0 "$pid" || { echo "soak: agent exited during warm-up; see $out/agent.log" >&2; exit 1; }
sample start
t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt "$secs" ]; do
  sleep 60
  kill -0 "$pid" || { echo "soak: agent exited early; see $out/agent.log" >&2; exit 1; }
  sample running
done
sample end
kill -TERM "$pid"
wait "$pid" || { echo "soak: agent exited non-zero; see $out/agent.log" >&2; exit 1; }
trap - EXIT

awk -F, '$2=="start"{r0=$4; f0=$5} $2=="end"{r1=$4; f1=$5}
  END {printf "rss start %d KiB, end %d KiB, growth %d KiB; fds start %d, end %d\n", r0, r1, r1-r0, f0, f1
       exit !((r1 - r0) <= 1024 && f1 <= f0)}' "$csv" \
  && echo "soak: PASS ($csv)" || { echo "soak: FAIL ($csv)"; exit 1; }
