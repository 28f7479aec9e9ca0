#!/usr/bin/env bash
# test.sh — THE command that runs Strom's whole test suite (README and CI: .ci/run -> scripts/test.sh).
#
# Usage: scripts/test.sh [-- <cargo test args>]
#   scripts/test.sh                      everything: cargo test --workspace + Python client tests
#   scripts/test.sh -- pgwire            forwards "pgwire" to cargo test (a test-name filter)
#   scripts/test.sh -- foo -- --nocapture
#                                        everything after the first "--" goes to cargo test verbatim
#
# What it does, idempotently, on a fresh Debian machine with Rust installed (reruns skip finished steps):
#   1. apt-get installs what is missing: libclang-dev (RocksDB bindgen), g++ (RocksDB C++),
#      postgresql-client (real psql for tests), python3-venv (only if python3 cannot make a venv).
#      apt-get update runs at most once, and only if something is missing; sudo is used unless root.
#   2. a Python virtualenv at $STROM_TOOLS_DIR/pyenv with psycopg[binary] (psycopg 3) and pytest
#      (pip runs only when one of them is missing).
#   3. starts the services in $TEST_SERVICES via scripts/services.sh and exports the TEST_* env it prints.
#   4. cargo test --workspace (builds the strom binary too; tests/it spawns $CARGO_TARGET_DIR/debug/strom).
#   5. pytest tests/clients with STROM_BIN=$CARGO_TARGET_DIR/debug/strom (each module starts its own server).
#   6. cargo fmt --check and cargo clippy --all-targets -D warnings.
#   then prints a summary with per-phase timings and exits non-zero if any phase failed.
#
# Environment:
#   CARGO_TARGET_DIR     default ~/.cache/strom/target (outside the clone, so CI builds incrementally)
#   STROM_TOOLS_DIR      default ~/.cache/strom-tools (Python venv at $STROM_TOOLS_DIR/pyenv)
#   TEST_SERVICES        services to start, default "pg mariadb kafka" (any of: pg mariadb mqtt kafka)
#   STROM_LONG_TESTS=1   passed through to the tests: also run the long (soak) tests
#   STROM_SKIP_PYTHON=1  skip the Python client tests (e.g. while iterating on one cargo test)
#   STROM_SKIP_LINT=1    skip the final cargo fmt --check / cargo clippy -D warnings phase
#   PYTEST_ARGS          extra arguments for pytest (word-split), e.g. PYTEST_ARGS="-k binary -x"
#   PYTEST_TIMEOUT       seconds before the Python client tests are killed (default 600)
#   Service ports/dirs:  see scripts/services.sh (PG_PORT, SVC_DIR, ...)
# The services are left running afterwards (stop them with: scripts/services.sh stop).
set -euo pipefail

TEST_SERVICES="${TEST_SERVICES:-pg mariadb kafka}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-600}"
APT_PACKAGES=(libclang-dev g++)            # + postgresql-client / python3-venv, checked separately below
PY_PACKAGES=("psycopg[binary]>=3.1,<4" "pytest>=7")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export STROM_TOOLS_DIR="${STROM_TOOLS_DIR:-$HOME/.cache/strom-tools}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strom/target}"
VENV="$STROM_TOOLS_DIR/pyenv"
export DEBIAN_FRONTEND=noninteractive

CARGO_ARGS=()
if [ $# -gt 0 ]; then
  [ "$1" = "--" ] && shift
  CARGO_ARGS=("$@")
fi

log() { echo "[test.sh] $*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

APT_UPDATED=0
apt_install() {   # apt_install pkg... (only the missing ones; apt-get update at most once per run)
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $APT_UPDATED = 0 ]; then $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null; APT_UPDATED=1; fi
  log "apt-get install ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# ---------------- phase bookkeeping ----------------
now() { date +%s.%N; }
T_START=$(now)
SUMMARY=()          # "name status seconds"
FAILED=0
PHASE=""; PHASE_T0=""
phase_begin() { PHASE=$1; PHASE_T0=$(now); echo; log "=== $1"; }
phase_end() {  # phase_end ok|FAILED|skipped [note]
  local dt; dt=$(awk -v a="$PHASE_T0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  SUMMARY+=("$(printf '  %-10s %-8s %7ss  %s' "$PHASE" "$1" "$dt" "${2:-}")")
  [ "$1" = FAILED ] && FAILED=1
  log "=== $PHASE: $1 (${dt}s)"
  PHASE=""
}
CARGO_PASSED=0; CARGO_FAILED=0; PY_PASSED=0; PY_FAILED=0; COUNTED=0
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/strom-test.XXXXXX")
on_exit() {
  local rc=$?
  # A setup phase that died under set -e is still open: record it as failed.
  if [ -n "$PHASE" ]; then phase_end FAILED "aborted (exit $rc)"; fi
  local total; total=$(awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  echo
  echo "================ strom test summary ================"
  printf '%s\n' "${SUMMARY[@]}"
  echo "  total      ${total}s"
  if [ "$COUNTED" = 1 ]; then
    echo "  cargo: $CARGO_PASSED passed, $CARGO_FAILED failed; python: $PY_PASSED passed, $PY_FAILED failed"
  fi
  if [ "$COUNTED" = 1 ]; then
    echo "total: $((CARGO_PASSED + PY_PASSED)) passed, $((CARGO_FAILED + PY_FAILED)) failed"
  fi
  if [ "$FAILED" = 0 ] && [ "$rc" = 0 ]; then echo "RESULT: OK"; else echo "RESULT: FAILED"; fi
  rm -rf "$LOGDIR"
  if [ "$FAILED" != 0 ] && [ "$rc" = 0 ]; then rc=1; fi
  exit "$rc"
}
trap on_exit EXIT

# ---------------- 1. system packages ----------------
phase_begin packages
pkgs=("${APT_PACKAGES[@]}")
command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
if ! command -v python3 >/dev/null 2>&1; then
  pkgs+=(python3 python3-venv)
elif [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  pkgs+=(python3-venv)
fi
apt_install "${pkgs[@]}"
phase_end ok

# ---------------- 2. Python virtualenv ----------------
phase_begin pyenv
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  log "venv $VENV is broken (its base python is gone?): recreating"; rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  mkdir -p "$STROM_TOOLS_DIR"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import psycopg, psycopg_binary, pytest' >/dev/null 2>&1; then
  log "pip install ${PY_PACKAGES[*]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
phase_end ok "$("$VENV/bin/python" -c 'import psycopg, pytest; print("psycopg", psycopg.__version__, "pytest", pytest.__version__)')"

# ---------------- 3. services ----------------
phase_begin services
# shellcheck disable=SC2086  # TEST_SERVICES is a space-separated list
svc_env=$(bash "$ROOT/scripts/services.sh" start $TEST_SERVICES)
eval "$svc_env"
printf '%s\n' "$svc_env" | sed 's/^/  /' >&2
phase_end ok "$TEST_SERVICES"

# ---------------- 4. cargo test ----------------
count_cargo() {  # sum "test result: ok. N passed; M failed; ..." over all test binaries
  awk '/^test result: / {
         for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
       } END { printf "%d %d\n", p, f }' "$1"
}
phase_begin cargo
log "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
log "cargo test --workspace ${CARGO_ARGS[*]:-}"
rc=0
cargo test --workspace ${CARGO_ARGS[@]+"${CARGO_ARGS[@]}"} 2>&1 | tee "$LOGDIR/cargo.log" || rc=$?
read -r CARGO_PASSED CARGO_FAILED < <(count_cargo "$LOGDIR/cargo.log")
COUNTED=1
if [ $rc = 0 ]; then phase_end ok "$CARGO_PASSED passed"
else phase_end FAILED "exit $rc; $CARGO_PASSED passed, $CARGO_FAILED failed"; fi

# ---------------- 5. Python client tests ----------------
STROM_BIN="$CARGO_TARGET_DIR/debug/strom"
phase_begin pytest
if [ "${STROM_SKIP_PYTHON:-0}" = 1 ]; then
  phase_end skipped "STROM_SKIP_PYTHON=1"
elif [ ! -x "$STROM_BIN" ]; then
  log "$STROM_BIN does not exist (the cargo build failed?)"
  phase_end FAILED "no strom binary"
else
  rc=0
  # shellcheck disable=SC2086  # PYTEST_ARGS is word-split on purpose
  # timeout: a hung server must not eat CI's whole budget (it also signals the servers pytest started).
  STROM_BIN="$STROM_BIN" timeout -k 10 "$PYTEST_TIMEOUT" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} tests/clients 2>&1 \
    | tee "$LOGDIR/pytest.log" || rc=$?
  # pytest's closing line, e.g. "3 passed, 1 failed, 2 errors in 1.23s"
  last=$(grep -E '^=* *[0-9]+ (passed|failed|error|errors|skipped|deselected)' "$LOGDIR/pytest.log" | tail -1 || true)
  PY_PASSED=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || echo 0)
  PY_FAILED=$(( $(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+' || echo 0) \
              + $(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+' || echo 0) ))
  if [ $rc = 0 ]; then phase_end ok "$PY_PASSED passed"
  elif [ $rc = 5 ]; then phase_end FAILED "pytest collected no tests (exit 5)"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then phase_end FAILED "timed out after ${PYTEST_TIMEOUT}s"
  else phase_end FAILED "exit $rc; $PY_PASSED passed, $PY_FAILED failed"; fi
fi


# ---------------- 6. lint: formatting and clippy (the code must stay warning-free) ----------------
phase_begin lint
if [ "${STROM_SKIP_LINT:-0}" = 1 ]; then
  phase_end skipped "STROM_SKIP_LINT=1"
else
  rc=0
  cargo fmt --all -- --check 2>&1 | tail -20 || rc=$?
  if [ $rc = 0 ]; then
    cargo clippy --workspace --all-targets -q -- -D warnings 2>&1 | tail -40 || rc=$?
  fi
  if [ $rc = 0 ]; then phase_end ok "fmt + clippy clean"; else phase_end FAILED "exit $rc"; fi
fi

[ "$FAILED" = 0 ]
