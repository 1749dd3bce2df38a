#!/usr/bin/env bash
# Wall time of test binaries, one run each, one after the other (issue 20,
# "tests without real-time sleeps"): `test_walltimes.sh LABEL BIN...` runs
# every BIN with `--test-threads=${THREADS:-2}` (as tests/run.sh does) and
# SLICETRACE_REQUIRE_TOOLS=1 (a missing tool fails instead of skipping), and
# prints one CSV row per binary: label, binary, wall seconds, exit code,
# libtest's result line, and the 1-minute load average before the run (the
# machine is shared: say the load beside the time). A BIN may carry a libtest
# filter after a colon (`slicetrace_agent:probe::`).
set -uo pipefail
label=$1
shift
echo "label,binary,wall_s,rc,result,load1_before"
for spec in "$@"; do
  bin=${spec%%:*}
  filter=""
  [ "$spec" != "$bin" ] && filter=${spec#*:}
  load=$(cut -d' ' -f1 /proc/loadavg)
  log=$(mktemp)
  t0=$(date +%s.%N)
  SLICETRACE_REQUIRE_TOOLS=1 "$bin" --test-threads=${THREADS:-2} $filter >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  result=$(grep -E '^test result:' "$log" | tail -n1 | tr ',' ';')
  printf '%s,%s,%.1f,%s,%s,%s\n' "$label" "$(basename "$bin")" "$(echo "$t1 - $t0" | bc)" "$rc" "$result" "$load"
  if [ "$rc" != 0 ]; then
    sed 's/^/    /' "$log" | tail -n 40 >&2
  fi
  rm -f "$log"
done
