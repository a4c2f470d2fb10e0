#!/usr/bin/env bash
# Set up edgekit on a fresh Debian/Ubuntu machine: mosquitto (if missing) + a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
  # the demo and tests start their own broker on a free loopback port; the system one is not needed
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
