#!/usr/bin/env bash
# Set up edgekit on a fresh Debian/Ubuntu machine: mosquitto (if missing) + a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages, installed only when missing:
#   mosquitto  - the demo and tests start their own broker on a free loopback port
#   gcc        - a test compiles the C array `edgekit export --format c-array` writes for microcontrollers
#   postgresql - the registry's tests run against a private cluster (initdb + pg_ctl) as well as SQLite
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # the system services are not needed: tests and the demo start their own on free loopback ports
  $SUDO systemctl disable --now mosquitto postgresql >/dev/null 2>&1 || true
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
