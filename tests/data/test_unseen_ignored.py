"""The zero-shot protocol in training: pixels of unseen classes never reach loss_ce, seen classes
are re-indexed into the training vocabulary (seen_classes), and the model trains on seen names."""

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from clipdistill.data import SemSegDatasetMapper
from clipdistill.data.datasets.register_testbed import register_testbed
from clipdistill.data.synthetic import DEFAULT_WORLD
from clipdistill.data.synthetic.writer import generate_testbed
from clipdistill.modeling.segstudent import losses
from common import tiny_cfg

IGNORE = 255


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tb"))
    # many objects per image, so unseen classes are certainly present
    generate_testbed(root, num_train=24, num_val=2, size=48, seed=5, num_objects_p=(0, 0, 0, 1))
    register_testbed("tmpunseen", root)
    yield "tmpunseen_sem_seg_train"
    for split in ("train", "val"):
        DatasetCatalog.remove(f"tmpunseen_sem_seg_{split}")
        MetadataCatalog.remove(f"tmpunseen_sem_seg_{split}")


def _cfg(name):
    return tiny_cfg(
        "DATASETS.TRAIN",
        f"('{name}',)",
        "INPUT.RANDOM_FLIP",
        "none",  # identity geometry: outputs align with the files
        "INPUT.MIN_SIZE_TRAIN",
        "(48,)",
        "INPUT.MAX_SIZE_TRAIN",
        "48",
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
        str(IGNORE),
    )


def _expected(raw):
    names = DEFAULT_WORLD.class_names
    seen = DEFAULT_WORLD.seen_classes
    out = np.full(raw.shape, IGNORE, np.int64)
    for v in np.unique(raw):
        if names[v] in seen:
            out[raw == v] = seen.index(names[v])
    return out


def test_mapper_ignores_unseen_pixels(testbed):
    mapper = SemSegDatasetMapper(_cfg(testbed), True)
    unseen_ids = [DEFAULT_WORLD.class_names.index(n) for n in DEFAULT_WORLD.unseen_classes]
    n_unseen = 0
    for d in DatasetCatalog.get(testbed):
        raw = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        out = mapper(dict(d))["sem_seg"].numpy()
        np.testing.assert_array_equal(out, _expected(raw))
        unseen_px = np.isin(raw, unseen_ids)
        n_unseen += int(unseen_px.sum())
        assert (out[unseen_px] == IGNORE).all()
    assert n_unseen > 500  # the check above was exercised
    # the test mapper does not touch labels (the evaluator reads every class from disk)
    assert "sem_seg" not in SemSegDatasetMapper(_cfg(testbed), False, dataset_names=[testbed])(
        dict(DatasetCatalog.get(testbed)[0])
    )


def test_unseen_pixels_never_reach_loss_ce(testbed, monkeypatch):
    cfg = _cfg(testbed)
    mapper = SemSegDatasetMapper(cfg, True)
    records = DatasetCatalog.get(testbed)[:6]
    batch = [mapper(dict(d)) for d in records]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    assert model.train_vocabulary == DEFAULT_WORLD.seen_classes
    seen_calls = []
    real_ce = losses.ce_loss

    def spy(logits, target, ignore_index):
        seen_calls.append((logits.detach(), target.clone(), ignore_index))
        return real_ce(logits, target, ignore_index)

    monkeypatch.setattr(losses, "ce_loss", spy)
    with EventStorage():
        out = model(batch)
    assert torch.isfinite(out["loss_ce"])
    ((logits, target, ignore_index),) = seen_calls
    assert ignore_index == IGNORE
    assert logits.shape[1] == len(DEFAULT_WORLD.seen_classes)  # unseen names are not scored
    unseen_ids = [DEFAULT_WORLD.class_names.index(n) for n in DEFAULT_WORLD.unseen_classes]
    for i, d in enumerate(records):
        raw = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        t = target[i, : raw.shape[0], : raw.shape[1]].numpy()
        assert (t[np.isin(raw, unseen_ids)] == IGNORE).all()
        np.testing.assert_array_equal(t, _expected(raw))
    valid = target[target != IGNORE]
    assert valid.max() < len(DEFAULT_WORLD.seen_classes)
