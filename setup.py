#!/usr/bin/env python
from setuptools import find_packages, setup

setup(
    name="clipdistill",
    version="0.1.0",
    description="Distill CLIP into small, fast open-vocabulary segmentation models (detectron2 plugin)",
    packages=find_packages(exclude=("configs", "tests*", "tools", "datasets")),
    package_data={
        "clipdistill": [
            "data/datasets/class_names/*.txt",
            "data/datasets/class_names/*.tsv",
            "modeling/clip/model_configs/*.json",
            "testbed/model_configs/*.json",
        ]
    },
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
