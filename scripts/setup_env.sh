#!/usr/bin/env bash
# Create a virtualenv (default .venv) with PyTorch, detectron2 and clipdistill (editable).
#
# detectron2: official source (pip, pinned commit) when GitHub is reachable; otherwise the PyPI
# build of detectron2's main branch, `sal-detectron2` (a CPython-3.10 wheel whose Python code runs
# on 3.10+; its compiled ops are not needed by clipdistill). Force one with D2_SOURCE=github|pypi.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
D2_SOURCE=${D2_SOURCE:-auto}
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip install -q --upgrade pip setuptools wheel

# PyPI's torch/torchvision pair (CUDA builds; they run on CPU too). No exact pin: an old local
# CPU-only torch file must not be picked, it does not match PyPI's torchvision.
python -c "import torch, torchvision" 2>/dev/null || pip install -q "torch>=2.4" "torchvision>=0.19"

if ! python -c "import detectron2" 2>/dev/null; then
  if [ "$D2_SOURCE" = auto ]; then
    if timeout 20 git ls-remote --exit-code https://github.com/facebookresearch/detectron2 HEAD \
        >/dev/null 2>&1; then D2_SOURCE=github; else D2_SOURCE=pypi; fi
  fi
  if [ "$D2_SOURCE" = github ]; then
    echo "[setup] detectron2 from source @ $D2_COMMIT"
    pip install -q --no-build-isolation \
      "git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"
  else
    echo "[setup] detectron2 from PyPI's sal-detectron2==0.7.2 (detectron2 main, late 2024)"
    tmp=$(mktemp -d)
    pip download -q --no-deps --python-version 3.10 --only-binary=:all: -d "$tmp" \
      sal-detectron2==0.7.2
    # The wheel is tagged cp310 but its Python code is version-independent: install it as py3.
    mv "$tmp"/sal_detectron2-0.7.2-*.whl "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
    pip install -q --no-deps "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
    rm -rf "$tmp"
    # its runtime dependencies (its metadata omits fvcore/iopath; it asks numpy<2)
    pip install -q "numpy<2" "Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" \
      "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29.0" tensorboard "omegaconf>=2.1,<2.4" \
      "hydra-core>=1.1" black packaging fvcore iopath
  fi
fi
# numpy<2 for detectron2 (in the same pip call, or a dependency upgrades it); OpenCV wheels
# >= 4.12 require numpy 2.
pip install -q -e ".[dev,deploy]" "numpy<2" "opencv-python-headless<4.12"
python -c "import detectron2, open_clip, timm, clipdistill; print('[setup] ok: detectron2', detectron2.__version__, '| open_clip', open_clip.__version__, '| timm', timm.__version__)"
