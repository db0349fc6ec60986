#!/usr/bin/env bash
# What a GPU machine lent by the `device` tool lacks, gathered here so that one `run` can `carry` it
# (64 MiB a call, the working tree included; both folders are git-ignored):
#   .whl/  wheels of our stack that its image lacks. The image has torch 2.11, lightning 2.6, numpy,
#          scipy, scikit-image/-learn, psutil, lxml, absl-py, protobuf, etils (KINDS.md), for Python 3.12;
#          PYVER=3.11 builds the same set for this machine, to rehearse the device's install here.
#   .gl/   the EGL / GLVND loaders MuJoCo needs on the NVIDIA driver (`MUJOCO_GL=egl`).
# Left out on purpose: mlflow (the suite's runs use `--trainer.logger false`), PyAV (eval videos are off
# by default), ray, labmaze, and dm_control's locomotion / dog / test assets (90 of its 115 MB; the suite's
# tasks, the DMC suite's walker and cartpole, need none). benchmarks/gpu_suite.sh installs both folders.
#   bash scripts/device_bundle.sh && du -sh .whl .gl
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${PYVER:-3.12}
pip=(.venv/bin/python -m pip)
[[ -x .venv/bin/python ]] || pip=(python3 -m pip)

# Pinned to what `scripts/bootstrap.sh` installs (torchrl/tensordict/dm_control/mujoco) or its resolver
# picked; every one was checked to import and run on torch 2.11 (docs/gpu.md).
wheels=(
  torchrl==0.14.1 tensordict==0.14.3 pyvers==0.2.3 hoptorch==0.1.4 orjson==3.13.0 importlib_metadata==9.1.0
  mujoco==3.17.0 glfw==2.11.0 PyOpenGL==3.1.10 websockets==17.4 dm-env==1.6 dm-tree==0.1.10
  jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 omegaconf==2.4.0 captum==0.9.0
)
platforms=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
  manylinux_2_34 manylinux_2_35; do
  platforms+=(--platform "${tag}_x86_64")
done
rm -rf .whl && mkdir -p .whl
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d .whl "${wheels[@]}" 2>&1 | grep -v "is ignored" || true

# dm_control without the assets the DMC suite's tasks never load: the wheel is rebuilt with pip's own
# machinery (its RECORD rewritten), so `pip install` sees a valid wheel.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${pip[@]}" download -q --no-deps --only-binary=:all: -d "$work" dm_control==1.0.50 2>&1 | grep -v "is ignored" || true
python3 - "$work" .whl <<'EOF'
import base64, hashlib, sys, zipfile
from pathlib import Path

src = next(Path(sys.argv[1]).glob("dm_control-*.whl"))
drop = ("dm_control/locomotion/", "dm_control/suite/dog_assets/", "dm_control/mujoco/testing/",
        "dm_control/manipulation/")
dest = Path(sys.argv[2]) / src.name
records = []
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    for info in zin.infolist():
        if info.filename.startswith(drop) or info.filename == record_name:
            continue
        data = zin.read(info)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{info.filename},sha256={digest},{len(data)}")
    zout.writestr(record_name, "\n".join([*records, f"{record_name},,"]) + "\n")
print(f"{dest.name}: {src.stat().st_size / 2**20:.1f} MiB -> {dest.stat().st_size / 2**20:.1f} MiB")
EOF

# EGL through GLVND for the NVIDIA driver (the NVIDIA container recipe), amd64 whatever this machine is.
rm -rf .gl && mkdir -p .gl /tmp/amd64/partial
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt_opts[@]}" update -qq
(cd .gl && apt-get "${apt_opts[@]}" download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >>.git/info/exclude
total=$(du -sbc .whl .gl $(git ls-files) | tail -1 | cut -f1)
echo "to carry: $(du -sh .whl | cut -f1) wheels, $(du -sh .gl | cut -f1) GL; with the tree $((total / 1048576)) MiB of 64"
((total < 64 * 1048576)) || { echo "over the device's 64 MiB" >&2; exit 1; }
