#!/usr/bin/env bash
# Runs every slicetrace test from a fresh machine: installs the real test tools
# (Debian: prometheus/promtool, kubectl fallback; pip, in a git-ignored venv:
# rotel, duckdb, pyarrow, polars, moto, kubernetes-validate), builds the
# workspace in debug mode and runs `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# --- Debian packages ------------------------------------------------------
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# A TTF font for `slicetrace plot --out x.png` (SVG needs none).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "missing ${need_apt[*]} and not root: tests that need them will fail"
  fi
fi
# The Debian prometheus package starts a service on :9090; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus >/dev/null 2>&1 || true; fi
pkill -x prometheus >/dev/null 2>&1 || true

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
# Tests that need a real tool fail (not skip) when it is missing under run.sh.
export SLICETRACE_REQUIRE_TOOLS=1

# --- Build and test ---------------------------------------------------------
log "building the workspace (debug)"
cargo build --workspace --bins
log "running cargo test --workspace"
cargo test --workspace -- --test-threads="${SLICETRACE_TEST_THREADS:-2}"
