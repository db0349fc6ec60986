#!/usr/bin/env bash
# The GPU figures (docs/gpu.md) on a GPU machine, in one call (figures under $OUT):
#   bash scripts/device_bundle.sh          # here, once: .whl/ and .gl/ (38 MiB with the tree)
#   then on the GPU machine, with .whl and .gl beside the tree: bash benchmarks/gpu_suite.sh
# Installs what the image lacks (into /tmp, never into its own Python), then benchmarks/gpu_suite.py;
# arguments pass through (e.g. --parts update throughput, --budget-s 300).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -d .gl ]]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
# GLVND finds the NVIDIA EGL vendor library through this file where the image mounts the driver there.
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [[ -f $vendor && -z ${__EGL_VENDOR_LIBRARY_FILENAMES:-} ]]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
fi
out=${OUT:-benchmarks/out/gpu}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
exec python3 benchmarks/gpu_suite.py --out "$out" "$@"
