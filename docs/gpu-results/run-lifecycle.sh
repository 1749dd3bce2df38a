#!/usr/bin/env bash
# Issue 21, one GPU at a time: the watchdog, recovery, and the GPU's own
# fault reports. One device call, nothing built there.
#
#   bash docs/gpu-results/run-lifecycle.sh [STEP...]   (default: tier hang tenant)
#
#   tier    the probe crate's GPU tests that matter here (built here with
#           `cargo test -p slicetrace-probe --no-run`, copied to .gpu/tests/),
#           run with SLICETRACE_REQUIRE_GPU=1 and the filter `hang|faults`:
#           the planted hang (in the primary context) holds its run for
#           PLANTED_HANG (30 s) through the real graph, the waiting host thread
#           stays off the CPU, the next run is clean; a backend in a context
#           of its own opens and runs 40 clean runs while the hang still spins
#           (asserted), and one in the primary context is opened beside it
#           stage by stage (GPU-RESULT: where the old recovery waited).
#   hang    the agent (rate 5/s, every GPU) with [watchdog] run_deadline_ms =
#           2000 and a hang planted on GPU 0 after 20 s
#           (watchdog.plant_hang_after_ms). Every 0.5 s: /metrics (runs per
#           GPU, hangs, the health reason, slicetrace_gpu_probing), /readyz and
#           /healthz status; every 1 s: the agent's CPU and each of its
#           threads' CPU from /proc (the abandoned runner thread included).
#           Expect: the watchdog fires ~2 s after the plant, the GPU is
#           unhealthy (hung) at the next evaluation (evaluate_interval_ms =
#           1000 here), the backend is re-created without a reset ~1 s
#           later in a context of its own and both kernels run again while
#           the abandoned run still spins (rows whose `ts` is inside the
#           hang, runs/s during it, /readyz back to 200 before the hang
#           ends), the abandoned backend is parked
#           (slicetrace_probe_backends_parked 1) and released when its run
#           returns, the other GPUs and the consumers never stop, /healthz
#           stays 200, and the CPU stays flat during the hang.
#   tenant  a tenant that hangs (`slicetrace-load gemm --plant-hang-after
#           15s`: its run spins 30 s on the GPU) beside the agent with the
#           default watchdog: a wedged tenant slows the agent's runs by its
#           time slices but must not fire the agent's watchdog (no false hang).
#
# Binaries: .gpu/slicetrace-agent and .gpu/slicetrace-load (this build,
# `cargo build --release -p slicetrace-agent -p slicetrace-load`, stripped),
# .gpu/tests/* (the probe crate's test binary). Raw files stay under
# /tmp/lifecycle-raw and are re-packed into $OUT/lifecycle.tar.gz after every
# step, so a call that hits its time limit still returns what it measured.
set -uo pipefail
BIN=${BIN:-.gpu}
OUT=${OUT:-./out-lifecycle}
R=/tmp/lifecycle-raw
SECS=${SECS:-75}
mkdir -p "$OUT" "$R"
export NODE_NAME=gpu-node SLICETRACE_LOG=info
log() { echo "[$(date -u +%H:%M:%S.%3N) epoch=$(date +%s.%N)] $*" | tee -a "$R/timeline.log"; }
pack() { tar -czf "$OUT/lifecycle.tar.gz" -C "$R" . ; cp "$R/timeline.log" "$OUT/timeline.txt" 2>/dev/null; cp "$R"/summary-*.txt "$OUT/" 2>/dev/null; }
cfg() { # name port extra-lines -> config path
  printf '[probe]\nrate_hz = 5\n[metrics]\nlisten = "127.0.0.1:%s"\n[occupancy]\nkube_api = "off"\n[health]\nevaluate_interval_ms = 1000\n%b' "$2" "$3" >"$R/$1.toml"
  echo "$R/$1.toml"
}

# fetch URL -> body; code URL -> HTTP status (curl, else python3).
if command -v curl >/dev/null; then
  fetch() { curl -s -m 1 "$1"; }
  code() { curl -s -o /dev/null -w '%{http_code}' -m 1 "$1"; }
else
  fetch() { python3 -c 'import sys,urllib.request as u
try: sys.stdout.write(u.urlopen(sys.argv[1], timeout=1).read().decode())
except Exception: pass' "$1"; }
  code() { python3 -c 'import sys,urllib.request as u,urllib.error as e
try: print(u.urlopen(sys.argv[1], timeout=1).status)
except e.HTTPError as x: print(x.code)
except Exception: print(0)' "$1"; }
fi

# watch NAME PID PORT: samples /metrics, /readyz, /healthz every 0.5 s and
# the process's and its threads' CPU ticks every 1 s until PID exits.
watch() {
  local name=$1 pid=$2 port=$3 i=0
  while kill -0 "$pid" 2>/dev/null; do
    local t; t=$(date +%s.%N)
    fetch "http://127.0.0.1:$port/metrics" \
      | grep -E '^slicetrace_(probe_runs_total|probe_hangs_total|probe_backends_parked|probe_backends_released_total|gpu_probing|xid_errors_total|gpu_verdict_reason\{.*dimension="health")' \
      | sed "s/^/$t /" >>"$R/$name-metrics.txt"
    echo "$t readyz=$(code "http://127.0.0.1:$port/readyz") healthz=$(code "http://127.0.0.1:$port/healthz")" >>"$R/$name-probes.txt"
    if [ $((i % 2)) -eq 0 ]; then
      echo "$t $(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null)" >>"$R/$name-cpu.txt"
      for task in /proc/"$pid"/task/*; do
        echo "$t $(cat "$task/comm" 2>/dev/null | tr ' ' '_'):${task##*/} $(awk '{print $14+$15}' "$task/stat" 2>/dev/null)"
      done >>"$R/$name-threads.txt"
    fi
    i=$((i + 1))
    sleep 0.5
  done
}

tier() {
  log "tier: GPU test binaries (hang, faults)"
  nvidia-smi --query-gpu=name,uuid,driver_version --format=csv >"$R/gpu.csv"
  local rc=0
  for t in "$BIN"/tests/*; do
    [ -x "$t" ] || continue
    for f in hang faults; do
      SLICETRACE_REQUIRE_GPU=1 "$t" "$f" --test-threads=1 --nocapture >>"$R/tier-$(basename "$t").txt" 2>&1 || rc=1
    done
    grep -E "^test |^test result|GPU-RESULT|panicked" "$R/tier-$(basename "$t").txt" | tee -a "$R/timeline.log"
  done
  log "tier: rc=$rc"
  pack
}

hang() {
  local c; c=$(cfg hang 9481 '[watchdog]\nrun_deadline_ms = 2000\nplant_hang_after_ms = 20000\nplant_hang_device = 0\n')
  log "hang: agent for ${SECS}s, hang planted on GPU 0 after 20 s"
  "$BIN/slicetrace-agent" run --config "$c" --backend cuda --data-dir "$R/hang-data" --duration "${SECS}s" \
    --summary-json "$R/hang-summary.json" >"$R/hang.txt" 2>"$R/hang.log" &
  local pid=$!
  watch hang "$pid" 9481 &
  local wp=$!
  wait "$pid"; log "hang: agent exited rc=$?"
  wait "$wp"
  grep -E "planting a hang|past its deadline|re-created the probe backend|context of its own|hung run returned|self-test|health verdict changed|probe thread stopped" "$R/hang.log" | cut -c1-400 | tee -a "$R/timeline.log"
  summarise hang | tee "$R/summary-hang.txt"
  pack
}

tenant() {
  local c; c=$(cfg tenant 9482 '')
  log "tenant: a tenant that hangs for 30 s after 15 s, beside the agent (${SECS}s)"
  "$BIN/slicetrace-load" gemm --backend cuda --preset light --duration "$((SECS - 10))s" --period-ms 5 \
    --plant-hang-after 15s >"$R/tenant-load.json" 2>"$R/tenant-load.log" &
  local lp=$!
  "$BIN/slicetrace-agent" run --config "$c" --backend cuda --data-dir "$R/tenant-data" --duration "${SECS}s" \
    --summary-json "$R/tenant-summary.json" >"$R/tenant.txt" 2>"$R/tenant.log" &
  local pid=$!
  watch tenant "$pid" 9482 &
  local wp=$!
  wait "$pid"; log "tenant: agent exited rc=$?"
  wait "$lp" "$wp"
  grep -E "planting a hang" "$R/tenant-load.log" | tee -a "$R/timeline.log"
  summarise tenant | tee "$R/summary-tenant.txt"
  pack
}

summarise() {
  python3 - "$R" "$1" "$(getconf CLK_TCK)" <<'PY'
import collections, json, re, sys
R, name, hz = sys.argv[1], sys.argv[2], float(sys.argv[3])
def epoch_of(line):
    m = re.search(r'"timestamp":"([^"]+)"', line) or re.match(r'(\S+Z)', line)
    if not m: return None
    from datetime import datetime
    return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
events = {}
try:
    for line in open(f"{R}/{name}.log"):
        for key, pat in [("planted", "planting a hang"), ("fired", "past its deadline"),
                         ("reopened", "re-created the probe backend"),
                         ("released", "hung run returned")]:
            if pat in line and key not in events:
                events[key] = epoch_of(line)
except FileNotFoundError:
    pass
runs = collections.defaultdict(list); hung_at = None; hangs_total = 0
parked_max = 0; parked_last = None
for line in open(f"{R}/{name}-metrics.txt"):
    t, rest = line.split(" ", 1); t = float(t)
    m = re.match(r'(\w+)\{([^}]*)\} (\S+)', rest)
    if not m: continue
    fam, labels, v = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))
    if fam == "slicetrace_probe_runs_total":
        runs[labels.get("gpu_uuid")].append((t, v))
    if fam == "slicetrace_gpu_verdict_reason" and labels.get("reason") == "hung" and hung_at is None:
        hung_at = t
    if fam == "slicetrace_probe_hangs_total":
        hangs_total = max(hangs_total, v)
    if fam == "slicetrace_probe_backends_parked":
        parked_max = max(parked_max, v); parked_last = v
# Samples before the server answered at all (code 0/000) are not counted.
probes = [p for p in (l.split() for l in open(f"{R}/{name}-probes.txt"))
          if len(p) == 3 and p[2] not in ("healthz=000", "healthz=0")]
bad_healthz = sum(1 for p in probes if p[2] != "healthz=200")
try:
    out_load = [l for l in open(f"{R}/{name}-load.log") if "planting a hang" in l]
except FileNotFoundError:
    out_load = []
cpu = [(float(t), float(v)) for t, v in (l.split() for l in open(f"{R}/{name}-cpu.txt")) if v]
def cpu_pct(a, b):
    w = [(t, v) for t, v in cpu if a <= t <= b]
    if len(w) < 2: return None
    return round(100 * (w[-1][1] - w[0][1]) / hz / (w[-1][0] - w[0][0]), 2)
def rate(uuid, a, b):
    w = [(t, v) for t, v in runs[uuid] if a <= t <= b]
    if len(w) < 2: return None
    return round((w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0]), 2)
threads = collections.defaultdict(list)
for l in open(f"{R}/{name}-threads.txt"):
    p = l.split()
    if len(p) == 3: threads[p[1]].append((float(p[0]), float(p[2])))
out = {"name": name, "events": events, "hung_verdict_at": hung_at,
       "hangs_total": hangs_total, "backends_parked_max": parked_max,
       "backends_parked_at_end": parked_last, "healthz_not_200_samples": bad_healthz,
       "readyz_not_200_samples": sum(1 for p in probes if p[1] != "readyz=200"),
       "samples": len(probes), "tenant_planted_hang": bool(out_load)}
p = events.get("planted")
if p and events.get("fired"):
    out["watchdog_fired_after_plant_s"] = round(events["fired"] - p, 2)
if events.get("fired") and hung_at:
    out["hung_verdict_after_fire_s"] = round(hung_at - events["fired"], 2)
if events.get("fired") and events.get("reopened"):
    out["reopened_after_fire_s"] = round(events["reopened"] - events["fired"], 2)
if events.get("released") and p:
    out["abandoned_released_after_plant_s"] = round(events["released"] - p, 2)
# The hang ends PLANTED_HANG (30 s) after its run was launched, at most
# one arrival gap after the plant.
hang_end = p + 30 if p else None
if p:
    out["reopened_during_hang"] = bool(events.get("reopened") and events["reopened"] < hang_end)
    fired = events.get("fired") or p
    ready_back = [float(q[0]) for q in probes if float(q[0]) > fired and q[1] == "readyz=200"]
    out["readyz_200_after_fire_s"] = round(ready_back[0] - fired, 2) if ready_back else None
    out["readyz_back_during_hang"] = bool(ready_back and ready_back[0] < hang_end)
    # Rows whose ts lies inside the hang, after the watchdog fired (the
    # replacement's runs), from the agent's Parquet files.
    try:
        import glob, pyarrow.parquet as pq
        ts = []
        for f in glob.glob(f"{R}/{name}-data/**/*.parquet", recursive=True):
            t = pq.read_table(f, columns=["ts"]).column("ts").cast("int64").to_pylist()
            ts += [x / 1e9 for x in t]
        out["rows_with_ts_in_hang_after_fire"] = sum(1 for x in ts if fired < x < hang_end - 1)
        out["rows_total"] = len(ts)
    except ImportError:
        out["rows_with_ts_in_hang_after_fire"] = "pyarrow not here: count from hang-data/ in the tarball"
    out["hang_window_epoch"] = [p, hang_end]
t0 = cpu[0][0] if cpu else 0; t1 = cpu[-1][0] if cpu else 0
if p:
    during = (p + 5, p + 28)  # after the watchdog fired and the reopen
    out["cpu_pct_before_plant"] = cpu_pct(t0 + 5, p)
    out["cpu_pct_during_hang"] = cpu_pct(*during)
    out["cpu_pct_after_hang"] = cpu_pct(p + 32, t1)
    out["runs_per_s_by_gpu"] = {u: {"before": rate(u, t0 + 5, p), "during_hang": rate(u, *during),
                                    "after": rate(u, p + 32, t1)} for u in sorted(runs)}
    out["thread_cpu_s_during_hang"] = {
        k: round((max(v for t, v in s if t <= during[1]) - min(v for t, v in s if t >= during[0])) / hz, 3)
        for k, s in threads.items()
        if any(t <= during[1] for t, _ in s) and any(t >= during[0] for t, _ in s)}
else:
    out["cpu_pct"] = cpu_pct(t0 + 5, t1)
    out["runs_per_s_by_gpu"] = {u: rate(u, t0 + 5, t1) for u in sorted(runs)}
try:
    out["exit_summary_rows"] = len(json.load(open(f"{R}/{name}-summary.json")))
except Exception:
    pass
print(json.dumps(out, indent=1))
PY
}

[ $# -eq 0 ] && set -- tier hang tenant
for step in "$@"; do
  case "$step" in
    tier) tier ;;
    hang) hang ;;
    tenant) tenant ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
ls -la "$OUT"
