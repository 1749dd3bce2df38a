#!/usr/bin/env bash
# Benchmark (not a test): `slicetrace fleet --window 1h` over a bucket served
# by a real `moto_server` on loopback, and the same command over the same
# files on the local disk. Runs alternate local and S3; each records wall
# time and peak RSS (/usr/bin/time -v), and each S3 run the requests moto
# served while it ran, by kind, counted from moto's request log (one line
# per request): LIST (GET on the bucket with list-type=2; `delimited` when
# it has a delimiter), GET (an object; `get_range`: those answered 206, a
# byte range), HEAD, other. The two answers' `scan`,
# `summary` and `runs` must be equal (the script fails otherwise).
# Raw numbers go to OUT (JSON lines).
#
# The data (`gen-synthetic --fleet-layout`, generated unless DATA_DIR has
# probes/): NODES nodes × GPUS GPUs, a file per node every 5 minutes; END's
# day from midnight to END, the last DENSE_SECS at RATE arrivals/s per GPU
# (the rest SPARSE rows per GPU per file), and OLD_DAYS days before it with
# a small file per node every OLD_FILE_SECS. The upload into moto is
# timed too (boto3, UPLOAD_THREADS at once).
#
# Usage: NODES=200 RATE=0.5 END=2026-01-07T02:00:00Z RUNS=2 analysis/bench/fleet_s3.sh [DATA_DIR]
#   SLICETRACE_BIN     default target/release/slicetrace
#   SLICETRACE_PYTHON  a python with boto3 and moto[server] (default .venv/bin/python)
#   KEEP=1             keep DATA_DIR afterwards (default: delete it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SLICETRACE_BIN:-$ROOT/target/release/slicetrace}
PY=${SLICETRACE_PYTHON:-$ROOT/.venv/bin/python}
NODES=${NODES:-200}
GPUS=${GPUS:-8}
RATE=${RATE:-5}
DENSE_SECS=${DENSE_SECS:-7200}
SPARSE=${SPARSE:-1}
OLD_DAYS=${OLD_DAYS:-1}
OLD_FILE_SECS=${OLD_FILE_SECS:-3600}
END=${END:-2026-01-07T13:00:00Z}
RUNS=${RUNS:-2}
UPLOAD_THREADS=${UPLOAD_THREADS:-16}
DIR=${1:-/tmp/slicetrace-fleet-s3-bench-$NODES}
OUT=${OUT:-$ROOT/docs/bench/fleet-s3-$NODES-nodes.jsonl}
WORK=$(mktemp -d)
moto_pid=""
cleanup() {
  # Only the moto_server this script started, by pid.
  if [ -n "$moto_pid" ]; then kill -TERM "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
  rm -rf "$WORK"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --release -p slicetrace-analysis" >&2; exit 2; }
"$PY" -c 'import boto3, moto.server' || { echo "no boto3/moto in $PY" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

ROLLUPS=${ROLLUPS:-0}  # raw files only, as measured before (the rollups are not uploaded)
. "$ROOT/analysis/bench/gen_fleet.sh"
gen_fleet "$OLD_DAYS"
files=$(find "$DIR/probes" -name '*.parquet' | wc -l)
bytes=$(du -sb "$DIR/probes" | cut -f1)
echo "data: $bytes bytes, $files files" >&2
echo "{\"step\":\"data\",\"files\":$files,\"bytes\":$bytes}" >> "$OUT"

# moto_server on a free port, its request log in a file.
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" -m moto.server -H 127.0.0.1 -p "$port" > "$WORK/moto.log" 2>&1 &
moto_pid=$!
endpoint="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('$endpoint')" 2>/dev/null && break
  sleep 0.2
done
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$endpoint

cat > "$WORK/upload.py" <<'EOF'
import boto3, os, sys
from concurrent.futures import ThreadPoolExecutor
endpoint, bucket, root, prefix, threads = sys.argv[1:6]
s3 = boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1',
                  aws_access_key_id='test', aws_secret_access_key='test')
s3.create_bucket(Bucket=bucket)
paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
def up(p):
    s3.upload_file(p, bucket, prefix + '/' + os.path.relpath(p, root))
with ThreadPoolExecutor(int(threads)) as ex:
    list(ex.map(up, paths))
print(len(paths))
EOF
/usr/bin/time -f '%e %M' -o "$WORK/up.time" "$PY" "$WORK/upload.py" "$endpoint" fleet-bench "$DIR" agents "$UPLOAD_THREADS" > "$WORK/up.out"
read -r us uk < "$WORK/up.time"
echo "uploaded $(cat "$WORK/up.out") files in $us s" >&2
echo "{\"step\":\"upload to moto_server\",\"files\":$(cat "$WORK/up.out"),\"wall_s\":$us,\"threads\":$UPLOAD_THREADS}" >> "$OUT"

# Requests in moto's log from line $1 on, by kind.
cat > "$WORK/count.py" <<'EOF'
import json, re, sys
lines = open(sys.argv[1], errors='replace').read().splitlines()[int(sys.argv[2]):]
c = {"list": 0, "list_delimited": 0, "get": 0, "get_range": 0, "head": 0, "other": 0}
for l in lines:
    # werkzeug's access line; colour codes may wrap the request.
    m = re.search(r'(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d{3})', l)
    if not m:
        continue
    method, target, status = m.groups()
    path, _, query = target.partition('?')
    if method == "GET" and "list-type=2" in query:
        c["list"] += 1
        if "delimiter=" in query:
            c["list_delimited"] += 1
    elif method == "GET":
        c["get"] += 1
        if status == "206":
            c["get_range"] += 1
    elif method == "HEAD":
        c["head"] += 1
    else:
        c["other"] += 1
print(json.dumps(c))
EOF

summary='import json,sys; d=json.load(open(sys.argv[1])); s=d["scan"]; s.pop("skipped", None); print(json.dumps({"scan": s, "summary": d["summary"], "gpus": len(d["gpus"]), "runs": d["runs"], "source": d.get("source")}))'
run_fleet() { # $1 = label, $2 = DATA
  /usr/bin/time -v "$BIN" fleet "$2" --until "$END" --window 1h --format json \
    > "$WORK/$1.json" 2> "$WORK/$1.err" || true
  code=$(grep -o 'Exit status: [0-9]*' "$WORK/$1.err" | grep -o '[0-9]*$' || echo "?")
  wall=$(grep 'Elapsed (wall clock)' "$WORK/$1.err" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$WORK/$1.err" | awk '{print $NF}')
  detail=$("$PY" -c "$summary" "$WORK/$1.json")
}
for i in $(seq 1 "$RUNS"); do
  run_fleet local "$DIR"
  echo "local run $i: $wall, $rss KiB, exit $code" >&2
  echo "{\"step\":\"slicetrace fleet --window 1h (local disk)\",\"run\":$i,\"wall\":\"$wall\",\"max_rss_kib\":$rss,\"exit\":$code,\"detail\":$detail}" >> "$OUT"
  local_detail=$detail
  before=$(wc -l < "$WORK/moto.log")
  run_fleet s3 "s3://fleet-bench/agents"
  reqs=$("$PY" "$WORK/count.py" "$WORK/moto.log" "$before")
  echo "s3 run $i: $wall, $rss KiB, exit $code, requests $reqs" >&2
  echo "{\"step\":\"slicetrace fleet --window 1h (moto_server)\",\"run\":$i,\"wall\":\"$wall\",\"max_rss_kib\":$rss,\"exit\":$code,\"requests\":$reqs,\"detail\":$detail}" >> "$OUT"
  "$PY" - "$local_detail" "$detail" <<'EOF'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
for k in ("scan", "summary", "gpus", "runs"):
    assert a[k] == b[k], (k, a[k], b[k])
EOF
done
echo "raw numbers: $OUT" >&2
