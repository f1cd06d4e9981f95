"""Fixtures of the deployment tests: a saved tiny random student, generated images, logs."""

import logging

import numpy as np
import pytest

from common import TINY_OPTS, tiny_cfg, write_image
from deploy_helpers import ListHandler


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of a freshly built tiny student, saved with SegmenterCheckpointer."""
    import torch

    from detectron2.modeling import build_model

    from clipdistill.engine import SegmenterCheckpointer

    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    folder = tmp_path_factory.mktemp("ckpt")
    SegmenterCheckpointer(model, str(folder)).save("tiny")
    return str(folder / "tiny.pth")


@pytest.fixture(scope="session")
def tiny_opts(tiny_checkpoint):
    """The config overrides of the tiny offline model with its checkpoint (last on a deployment
    tool's command line, as on train_net.py's)."""
    return list(TINY_OPTS) + ["MODEL.WEIGHTS", tiny_checkpoint]


@pytest.fixture
def images(tmp_path):
    """Three generated images of different sizes (one greyscale) -> {stem: path}."""
    rng = np.random.default_rng(0)
    out = {}
    for stem, shape in (("a", (64, 80, 3)), ("b", (96, 128, 3)), ("c", (50, 70))):
        path = str(tmp_path / "in" / f"{stem}.png")
        write_image(path, rng.integers(0, 256, shape, dtype=np.uint8))
        out[stem] = path
    return out


@pytest.fixture
def log_messages():
    """Messages logged by clipdistill's deployment code (detectron2's setup_logger stops
    propagation at "clipdistill", so pytest's caplog does not see them)."""
    handler = ListHandler()
    names = ["clipdistill.deploy.demo", "clipdistill.demo", "clipdistill.visualize"]
    for n in names:
        logging.getLogger(n).addHandler(handler)
    yield handler.messages
    for n in names:
        logging.getLogger(n).removeHandler(handler)
