#!/usr/bin/env bash
# One-command install of mmdet-cam and its OpenMMLab stack (CPU or GPU host).
#
#   bash scripts/install.sh            # creates ./.venv unless a venv/conda env is active
#
# Environment knobs:
#   PYTHON=python3.11       interpreter used to create .venv (default: python3)
#   MMDET_CAM_VENV=DIR      where to create the venv (default: <repo>/.venv)
#   MMDET_CAM_TORCH="..."   pip requirements for torch+torchvision (default: the verified pair)
#   MMCV_BUILD_JOBS=N       parallel compile jobs for the mmcv source build (default: nproc)
#   MMDET_CAM_CONSTRAINTS=F pip constraints for the Python stack (default: scripts/constraints.txt,
#                           the versions the tests last passed with; 'none': setup.py's ranges only)
#
# Idempotent: every step checks first and skips what is already in place. The slow step, the
# mmcv 2.1.0 source build (10-15 min on 2 cores), is cached by pip as a wheel, so a second
# install (even into a fresh venv on the same machine) takes seconds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '\n[install %4ss] %s\n' "$SECONDS" "$*"; }

# 1. The Python environment: reuse an active venv/conda env, else create <repo>/.venv.
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  py=$(command -v python)
  say "using the active environment: $py"
else
  venv=${MMDET_CAM_VENV:-$repo/.venv}
  if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  else
    say "reusing virtual environment $venv"
  fi
  py=$venv/bin/python
fi
pip() { "$py" -m pip "$@"; }
constraints=${MMDET_CAM_CONSTRAINTS:-$repo/scripts/constraints.txt}
pinned=()
[ "$constraints" = none ] || pinned=(-c "$constraints")
has() { "$py" -c "$1" >/dev/null 2>&1; }

# 2. Build tools. torch 2.13 wants setuptools>=77.0.3; mmcv 2.1.0's setup.py still imports
#    pkg_resources, which setuptools 81 removed.
say "build tools: pip, setuptools>=77.0.3,<81, wheel, ninja"
pip install --quiet --upgrade pip 'setuptools>=77.0.3,<81' wheel ninja

# 3. torch + torchvision as a matched pair. PyPI has no CPU torchvision; this machine's local
#    CPU torch wheel paired with PyPI's torchvision fails at `import torchvision`, so the
#    default excludes the +cpu build explicitly and takes PyPI's (CUDA) build, which also runs
#    on CPU. A working pair that is already installed is kept.
if has "import torch, torchvision"; then
  say "keeping installed $("$py" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")')"
else
  torch_reqs=${MMDET_CAM_TORCH:-'torch==2.13.0,!=2.13.0+cpu torchvision==0.28.0'}
  say "installing $torch_reqs"
  # shellcheck disable=SC2086
  pip install $torch_reqs
fi

# 4. mmcv 2.x (< 2.2: mmdet 3.3 asserts it) with compiled ops. No published wheel matches
#    torch 2.13, so pip builds the sdist; --no-build-isolation compiles against the torch above.
if has "import mmcv, mmcv.ops; from packaging.version import Version as V; assert V('2.0.0') <= V(mmcv.__version__) < V('2.2.0')"; then
  say "keeping installed mmcv $("$py" -c 'import mmcv; print(mmcv.__version__)') (ops import fine)"
else
  say "installing mmcv==2.1.0 with ops (source build: 10-15 min on 2 cores the first time, cached by pip afterwards)"
  pip install --quiet "${pinned[@]}" 'packaging' 'opencv-python>=4.8' 'numpy'
  MMCV_WITH_OPS=1 MAX_JOBS=${MMCV_BUILD_JOBS:-$(nproc)} \
    "$py" -m pip install --no-build-isolation 'mmcv==2.1.0'
fi

# 5. mmdet-cam itself (editable) with mmdet, mmengine, grad-cam and the test extras.
say "installing mmdet-cam (editable) with its test and multimodal extras${pinned:+ (versions from $constraints)}"
pip install --quiet "${pinned[@]}" -e "$repo[tests,multimodal]"

say "checking the stack"
"$py" - <<'PY'
import torch, torchvision, mmcv, mmcv.ops, mmengine, mmdet, pytorch_grad_cam, mmdet_cam
print(f"torch {torch.__version__} | torchvision {torchvision.__version__} | mmcv {mmcv.__version__}"
      f" | mmengine {mmengine.__version__} | mmdet {mmdet.__version__} | mmdet_cam {mmdet_cam.__version__}")
PY
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  say "done. Activate with: source ${venv#"$PWD"/}/bin/activate"
else
  say "done."
fi
