#!/usr/bin/env bash
# Benchmark (not a test): the same `slicetrace fleet --window 1h` on the
# local engine and on a Ballista cluster (one scheduler, EXECUTORS executors
# of VCORES task slots, all `slicetrace-ballista` on loopback), on the same
# files. Runs alternate local and Ballista; each prints wall time. The JSON
# answers of each pair are compared (compare_fleet_json.py): counts, states,
# reasons and the gate must be equal (the script fails otherwise); the
# t-digest quantiles are compared, and so are two local runs, which differ
# too (partial digests merge in arrival order).
# Raw numbers go to OUT (JSON lines).
#
# The data (`gen-synthetic --fleet-layout`, generated unless DATA_DIR has
# probes/): NODES nodes × GPUS GPUs, a file per node every 5 minutes over the
# day up to END, the last DENSE_SECS at RATE arrivals/s per GPU.
#
# Usage: NODES=10 RUNS=3 analysis/bench/fleet_ballista.sh [DATA_DIR]
#   SLICETRACE_BIN      default target/debug/slicetrace (and slicetrace-ballista beside it)
#   KEEP=1              keep DATA_DIR afterwards (default: delete it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SLICETRACE_BIN:-$ROOT/target/debug/slicetrace}
CLUSTER=${CLUSTER_BIN:-$(dirname "$BIN")/slicetrace-ballista}
NODES=${NODES:-10}
GPUS=${GPUS:-8}
RATE=${RATE:-5}
DENSE_SECS=${DENSE_SECS:-7200}
END=${END:-2026-01-07T13:00:00Z}
RUNS=${RUNS:-3}
EXECUTORS=${EXECUTORS:-2}
VCORES=${VCORES:-1}
DIR=${1:-/tmp/slicetrace-ballista-bench-$NODES}
OUT=${OUT:-$ROOT/docs/bench/fleet-ballista-$NODES-nodes.jsonl}
WORK=$(mktemp -d)
pids=()
cleanup() {
  # Only the processes this script started, by pid.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

[ -x "$BIN" ] && [ -x "$CLUSTER" ] || { echo "build first: cargo build -p slicetrace-analysis --bins" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ ! -d "$DIR/probes" ]; then
  end_s=$(date -u -d "$END" +%s)
  midnight=$(date -u -d "$(date -u -d "$END" +%Y-%m-%d)" +%s)
  /usr/bin/time -f '%e %M' -o "$WORK/gen.time" "$BIN" gen-synthetic --fleet-layout \
    --nodes "$NODES" --gpus-per-node "$GPUS" --rate-per-gpu "$RATE" \
    --span-secs $((end_s - midnight)) --dense-secs "$DENSE_SECS" --file-secs 300 \
    --sparse-rows-per-gpu 1 --end "$END" --seed 7 --threads 2 --out "$DIR" 2> "$WORK/gen.log"
  read -r gs gk < "$WORK/gen.time"
  echo "{\"step\":\"generate\",\"nodes\":$NODES,\"gpus\":$GPUS,\"wall_s\":$gs,\"max_rss_kib\":$gk,\"log\":\"$(tail -1 "$WORK/gen.log")\"}" >> "$OUT"
fi
files=$(find "$DIR/probes" -name '*.parquet' | wc -l)
bytes=$(du -sb "$DIR/probes" | cut -f1)
echo "{\"step\":\"data\",\"files\":$files,\"bytes\":$bytes}" >> "$OUT"

sport=$(free_port)
"$CLUSTER" scheduler --listen "127.0.0.1:$sport" --external-host 127.0.0.1 > "$WORK/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$WORK/scheduler.log" && break; sleep 0.1; done
for i in $(seq "$EXECUTORS"); do
  fp=$(free_port); gp=$(free_port)
  mkdir -p "$WORK/exec-$i"
  "$CLUSTER" executor --scheduler-host 127.0.0.1 --scheduler-port "$sport" \
    --bind-host 127.0.0.1 --external-host 127.0.0.1 --flight-port "$fp" --grpc-port "$gp" \
    --vcores "$VCORES" --work-dir "$WORK/exec-$i" > "$WORK/executor-$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$fp") 2>/dev/null && break; sleep 0.1; done
done
engine="df://127.0.0.1:$sport"

args=(fleet "$DIR" --until "$END" --window 1h --format json)
for r in $(seq "$RUNS"); do
  for eng in local "$engine"; do
    name=$([ "$eng" = local ] && echo local || echo ballista)
    /usr/bin/time -f '%e %M' -o "$WORK/t" "$BIN" "${args[@]}" --engine "$eng" \
      > "$WORK/$name.json" 2> "$WORK/$name.err" || [ $? = 1 ]
    read -r s k < "$WORK/t"
    echo "{\"step\":\"fleet\",\"engine\":\"$name\",\"run\":$r,\"executors\":$([ "$name" = local ] && echo 0 || echo "$EXECUTORS"),\"vcores_each\":$VCORES,\"wall_s\":$s,\"client_max_rss_kib\":$k}" >> "$OUT"
    echo "run $r $name: $s s" >&2
  done
  # Counts, states, reasons, the gate: equal. t-digest quantiles: compared
  # (they differ between two local runs too: the partial digests merge in
  # arrival order).
  cmpj() { python3 "$ROOT/analysis/bench/compare_fleet_json.py" "$1" "$2"; }
  [ "$r" = 1 ] && cp "$WORK/local.json" "$WORK/local-1.json"
  res=$(cmpj "$WORK/local.json" "$WORK/ballista.json")
  echo "{\"step\":\"compare\",\"run\":$r,\"a\":\"local\",\"b\":\"ballista\",\"result\":$res}" >> "$OUT"
  [ "$r" = 1 ] || echo "{\"step\":\"compare\",\"run\":$r,\"a\":\"local run 1\",\"b\":\"local\",\"result\":$(cmpj "$WORK/local-1.json" "$WORK/local.json")}" >> "$OUT"
  case "$res" in *'"exact_fields_equal": true'*) ;; *) echo "fleet answers differ beyond the quantiles: $res" >&2; exit 1 ;; esac
done
cat "$OUT"
