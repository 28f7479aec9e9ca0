#!/usr/bin/env bash
# run.sh — build Strom (release) and start it with embedded defaults:
#   listen 127.0.0.1:4566, data directory ./strom-data (override with --listen/--data-dir or
#   STROM_LISTEN/STROM_DATA_DIR; any arguments are passed to strom).
# Installs the one system package the build needs (libclang-dev, for RocksDB's bindings) if missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strom/target}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for p in libclang-dev g++; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[run.sh] apt-get install ${missing[*]}" >&2
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
. "$ROOT/scripts/release-env.sh"
exec cargo run --release --bin strom -- "$@"
