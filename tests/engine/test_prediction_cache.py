"""TEST.PREDICTION_CACHE never serves a stale prediction: it is keyed by the model's current
weights (an evaluation during training after the weights changed recomputes), by the image's
content (a dataset regenerated at the same paths recomputes), and a damaged cached label map is
recomputed rather than a traceback."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detectron2.data import MetadataCatalog

from clipdistill.engine.prediction_cache import maybe_wrap_prediction_cache
from common import tiny_cfg

NAME = "tmp_prediction_cache_val"
CLASSES = ["bg", "a", "b", "c"]


class ConstantSegmenter(nn.Module):
    """Predicts, everywhere, the class of its largest weight (so its weights decide the
    prediction); counts its calls."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        self.calls = 0

    def forward(self, batched_inputs):
        self.calls += len(batched_inputs)
        return [
            {"sem_seg": self.w.detach()[:, None, None].expand(-1, 6, 8).clone()}
            for _ in batched_inputs
        ]


@pytest.fixture
def setup(tmp_path):
    MetadataCatalog.get(NAME).set(stuff_classes=CLASSES)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(image)
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path / "out"), "TEST.PREDICTION_CACHE.ENABLED", "True")
    yield cfg, [{"dataset_name": NAME, "file_name": str(image)}], image
    MetadataCatalog.remove(NAME)


def _predict(cfg, model, inputs):
    # each evaluation wraps the model anew (Trainer.test)
    out = maybe_wrap_prediction_cache(cfg, model)(inputs)
    return int(out[0]["sem_seg"].argmax(0).flatten()[0])


def test_weights_changed_by_training_are_not_served_stale(setup):
    cfg, inputs, _ = setup
    model = ConstantSegmenter()
    assert _predict(cfg, model, inputs) == 1
    assert _predict(cfg, model, inputs) == 1 and model.calls == 1  # served from the cache
    with torch.no_grad():  # a training step: same config and MODEL.WEIGHTS, other weights
        model.w.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert _predict(cfg, model, inputs) == 3
    assert model.calls == 2


def test_an_image_regenerated_at_the_same_path_is_recomputed(setup):
    cfg, inputs, image = setup
    model = ConstantSegmenter()
    _predict(cfg, model, inputs)
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(image)  # same path, new content
    _predict(cfg, model, inputs)
    assert model.calls == 2


def test_a_truncated_cached_prediction_is_recomputed(setup):
    cfg, inputs, _ = setup
    model = ConstantSegmenter()
    _predict(cfg, model, inputs)
    root = os.path.join(cfg.OUTPUT_DIR, "inference", "prediction_cache")
    (png,) = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".png")]
    data = open(png, "rb").read()
    with open(png, "wb") as f:
        f.write(data[: len(data) // 2])
    assert _predict(cfg, model, inputs) == 1
    assert model.calls == 2
    assert np.array(Image.open(png)).max() == 1  # rewritten whole
