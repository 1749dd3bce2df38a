# Sourced by the fleet benchmarks (fleet_vs_duckdb.sh, fleet_s3.sh): writes a
# synthetic fleet in the agent's file layout into DIR with `gen-synthetic
# --fleet-layout`, unless DIR already has probes/, and appends each step's
# wall time and peak RSS to OUT (JSON lines).
#
# gen_fleet OLD_DAYS — needs BIN, DIR, OUT, WORK, NODES, GPUS, RATE, END,
# DENSE_SECS, SPARSE, OLD_FILE_SECS. END's day (midnight to END) gets a file
# per node every 5 minutes, the last DENSE_SECS at RATE arrivals/s per GPU,
# the rest SPARSE rows per GPU per file; the OLD_DAYS days before it small
# files, one per node every OLD_FILE_SECS (none when OLD_DAYS is 0). The
# seeds differ, so names never collide. ROLLUPS=1 (the default) also writes
# the agent's minute rollups of END's day (the same runs, rollups/);
# OLD_ROLLUPS=1 those of the older days too (default 0: neither fleet path
# lists those partitions, and a day-long older file would make 24 rollup
# files per node and day).
gen_fleet() {
  local old_days=$1
  [ -d "$DIR/probes" ] && return 0
  local end_s midnight midnight_rfc part gs gk
  end_s=$(date -u -d "$END" +%s)
  midnight=$(date -u -d "$(date -u -d "$END" +%Y-%m-%d)" +%s)
  midnight_rfc=$(date -u -d "@$midnight" +%Y-%m-%dT%H:%M:%SZ)
  echo "generating $NODES nodes x $GPUS GPUs into $DIR" >&2
  if [ "$old_days" -gt 0 ]; then
    /usr/bin/time -f '%e %M' -o "$WORK/old.time" "$BIN" gen-synthetic --fleet-layout \
      --nodes "$NODES" --gpus-per-node "$GPUS" --span-secs $((old_days * 86400)) \
      --dense-secs 0 --file-secs "$OLD_FILE_SECS" --sparse-rows-per-gpu "$SPARSE" \
      --end "$midnight_rfc" --seed 2 --threads "$(nproc)" --out "$DIR" \
      $([ "${OLD_ROLLUPS:-0}" = 1 ] || echo --no-rollups) 2> "$WORK/old.log"
  fi
  /usr/bin/time -f '%e %M' -o "$WORK/day.time" "$BIN" gen-synthetic --fleet-layout \
    --nodes "$NODES" --gpus-per-node "$GPUS" --rate-per-gpu "$RATE" \
    --span-secs $((end_s - midnight)) --dense-secs "$DENSE_SECS" --file-secs 300 \
    --sparse-rows-per-gpu "$SPARSE" --end "$END" --seed 7 --threads "$(nproc)" --out "$DIR" \
    $([ "${ROLLUPS:-1}" = 1 ] || echo --no-rollups) 2> "$WORK/day.log"
  for part in old day; do
    [ -f "$WORK/$part.time" ] || continue
    cat "$WORK/$part.log" >&2
    read -r gs gk < "$WORK/$part.time"
    echo "{\"step\":\"generate $part\",\"nodes\":$NODES,\"gpus\":$GPUS,\"rate\":$RATE,\"wall_s\":$gs,\"max_rss_kib\":$gk,\"log\":\"$(tail -1 "$WORK/$part.log")\"}" >> "$OUT"
  done
}
