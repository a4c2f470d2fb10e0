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
# PostgreSQL: the registry's tests run against a private cluster (initdb + pg_ctl) as well as SQLite.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  # tests start their own cluster on a free loopback port; the system one is not needed
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,postgres]"
# Third-party models shipped inside PyPI wheels, used by tests and benchmarks (never fetched at run time).
mkdir -p .cache/wheels
for w in nudenet==3.4.2 rapidocr-onnxruntime==1.4.4 mediapipe==0.10.21; do
  name=${w%%==*}; ver=${w##*==}
  ls .cache/wheels/${name//-/_}-${ver}-*.whl >/dev/null 2>&1 || \
    .venv/bin/python -m pip download -q --no-deps "$w" -d .cache/wheels
done
