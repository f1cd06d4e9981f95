#!/usr/bin/env python
import os

from setuptools import find_packages, setup


def _package_data(package):
    """Every non-Python file under ``package`` (paths relative to it), walked from the tree so a
    new or moved data folder cannot be left out of the wheel."""
    top = os.path.join(os.path.dirname(os.path.abspath(__file__)), package)
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith((".py", ".pyc", ".pyo")):
                found.append(os.path.relpath(os.path.join(root, name), top).replace(os.sep, "/"))
    return found


setup(
    name="clipdistill",
    version="0.1.0",
    description="Distill CLIP into small, fast open-vocabulary segmentation models (detectron2 plugin)",
    packages=find_packages(exclude=("configs", "tests*", "tools", "datasets")),
    # every non-Python file inside the package (class-name lists, CLIP model configs)
    package_data={"clipdistill": _package_data("clipdistill")},
    python_requires=">=3.9",
    # detectron2 is not on PyPI under its own name: install it first (README "Install").
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "open_clip_torch>=2.24",
        "timm>=1.0",
        "fvcore",
        "iopath",
        "opencv-python-headless",
        "safetensors",
        "tabulate",
        "tqdm",
        "Pillow",
        "scipy",
        "matplotlib",  # tools/compare.py's plot
    ],
    extras_require={
        # pydensecrf2: CaR's DenseCRF (MODEL.CAR.CRF.ENABLED); no wheel for recent Pythons on
        # PyPI, it builds from its sdist (needs a C++ compiler, about a minute)
        "dev": ["pytest", "hypothesis", "black", "flake8", "isort", "pydensecrf2>=1.1"],
        "car": ["pydensecrf2>=1.1"],
        # tools/export_model.py (ONNX, onnxruntime; onnxscript for --onnx-exporter dynamo),
        # tools/web_demo.py (gradio) and its browser test (playwright + Debian's chromium,
        # scripts/install_browser.sh)
        "deploy": ["onnx", "onnxruntime", "onnxscript", "ftfy", "regex", "gradio>=5", "playwright"],
    },
)
