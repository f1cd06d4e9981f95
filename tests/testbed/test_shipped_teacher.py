"""The shipped testbed CLIP (weights/testbed_clip_vit8.safetensors), loaded the way the configs
load it, classifies the fixed single-object set at the accuracy documented in docs/TESTBED.md."""

import os

import pytest
from safetensors import safe_open

from clipdistill.testbed.toy_clip import (
    SHIPPED_TEACHER_ACCURACY,
    TESTBED_CLIP_WEIGHTS,
    evaluate_weights_file,
)
from common import REPO

WEIGHTS = os.path.join(REPO, TESTBED_CLIP_WEIGHTS)


def test_shipped_weights_file():
    assert os.path.getsize(WEIGHTS) <= 10 * 2**20
    with safe_open(WEIGHTS, framework="pt") as f:
        meta = f.metadata()
    assert "recipe" in meta and "history" in meta


def test_shipped_teacher_accuracy_is_the_documented_figure():
    measured = evaluate_weights_file(WEIGHTS)
    assert measured["num_images"] == 720 and measured["num_names"] == 37
    for key, documented in SHIPPED_TEACHER_ACCURACY.items():
        # float16 weights, one CPU: the evaluation is deterministic up to BLAS summation order
        assert measured[key] == pytest.approx(documented, abs=0.3), (key, measured)
    doc = open(os.path.join(REPO, "docs", "TESTBED.md")).read()
    for key in ("top1", "colour", "shape"):
        assert f"{SHIPPED_TEACHER_ACCURACY[key]:.1f} %" in doc, key
