#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   1. headless OpenGL for MuJoCo (EGL, OSMesa fallback) via apt-get when run as root;
#   2. a virtualenv .venv with sgqn and its dev tools (torch pinned to the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."

gl_libs=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
missing=()
for pkg in "${gl_libs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing OpenGL libraries; run first: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
stamp=.venv/.sgqn-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: anything that resolves an unpinned torch first drags GBs of CUDA wheels.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
