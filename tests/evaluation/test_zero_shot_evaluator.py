"""Seen / unseen mIoU and hIoU: the evaluator against an independent numpy computation, and the
Trainer choosing it by evaluator_type."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

from clipdistill.data.datasets.common import list_sem_seg_files, register_sem_seg
from clipdistill.engine import Trainer
from clipdistill.evaluation import ZeroShotSemSegEvaluator, seen_unseen_miou

NAME = "tmpzs_sem_seg_val"
CLASSES = ["bg", "a", "b", "c", "d", "e"]
UNSEEN = ["b", "e"]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    gts, preds = [], []
    img_dir, gt_dir = tmp_path / "img", tmp_path / "gt"
    img_dir.mkdir()
    gt_dir.mkdir()
    for i in range(4):
        h, w = 20 + i, 30
        gt = rng.integers(0, 5, (h, w))  # class 5 ("e", unseen) never in the ground truth
        gt[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.6, gt, rng.integers(0, 6, (h, w)))
        pred[gt == 255] = rng.integers(0, 6, int((gt == 255).sum()))
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(img_dir / f"{i}.png")
        Image.fromarray(gt.astype(np.uint8)).save(gt_dir / f"{i}.png")
        gts.append(gt)
        preds.append(pred)
    register_sem_seg(
        NAME,
        lambda: list_sem_seg_files(NAME, str(img_dir), str(gt_dir), image_ext="png"),
        stuff_classes=CLASSES,
        image_root=str(img_dir),
        sem_seg_root=str(gt_dir),
        unseen_classes=UNSEEN,
    )
    yield str(img_dir), gts, preds
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _independent(gts, preds):
    """Per-class IoU accumulated over images, means over the classes present in the ground
    truth, split by the unseen list; no detectron2 code."""
    inter = {c: 0 for c in range(len(CLASSES))}
    union = {c: 0 for c in range(len(CLASSES))}
    present = set()
    for gt, pred in zip(gts, preds):
        valid = gt != 255
        for c in range(len(CLASSES)):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += int((g & p).sum())
            union[c] += int((g | p).sum())
            if g.any():
                present.add(c)
    iou = {c: inter[c] / union[c] for c in present}
    seen = [iou[c] for c in present if CLASSES[c] not in UNSEEN]
    unseen = [iou[c] for c in present if CLASSES[c] in UNSEEN]
    s, u = 100 * np.mean(seen), 100 * np.mean(unseen)
    return s, u, 2 * s * u / (s + u), 100 * np.mean(list(iou.values()))


def test_evaluator_matches_independent_computation(dataset, tmp_path):
    img_dir, gts, preds = dataset
    ev = ZeroShotSemSegEvaluator(NAME, distributed=False, output_dir=str(tmp_path / "out"))
    ev.reset()
    for i, pred in enumerate(preds):
        logits = torch.nn.functional.one_hot(torch.as_tensor(pred), len(CLASSES)).permute(2, 0, 1)
        ev.process(
            [{"file_name": os.path.join(img_dir, f"{i}.png")}], [{"sem_seg": logits.float()}]
        )
    res = ev.evaluate()["sem_seg"]
    s, u, h, m = _independent(gts, preds)
    assert res["mIoU-seen"] == pytest.approx(s, abs=1e-9)
    assert res["mIoU-unseen"] == pytest.approx(u, abs=1e-9)
    assert res["hIoU"] == pytest.approx(h, abs=1e-9)
    assert res["mIoU"] == pytest.approx(m, abs=1e-9)  # detectron2's own mIoU, unchanged
    assert 0 < u < 100 and 0 < s < 100 and abs(u - s) > 1  # a non-trivial case
    saved = torch.load(tmp_path / "out" / "sem_seg_evaluation.pth", weights_only=False)
    assert saved["hIoU"] == res["hIoU"]


def test_hiou_edge_cases():
    conf = np.zeros((4, 4), np.int64)  # 3 classes + ignore, [pred, gt]
    conf[0, 0], conf[1, 1] = 10, 5
    out = seen_unseen_miou(conf, [False, True, True])  # class 2 absent from the ground truth
    assert out == {"mIoU-seen": 100.0, "mIoU-unseen": 100.0, "hIoU": 100.0}
    conf[0, 1] = 5  # half of class 1 predicted as class 0
    out = seen_unseen_miou(conf, [False, True, True])
    assert out["mIoU-unseen"] == pytest.approx(50.0)
    assert out["mIoU-seen"] == pytest.approx(100 * 10 / 15)
    assert out["hIoU"] == pytest.approx(2 * 50 * 66.666666 / 116.666666, rel=1e-6)
    conf[1, 1] = 0  # unseen never right
    assert seen_unseen_miou(conf, [False, True, True])["hIoU"] == 0.0
    assert np.isnan(seen_unseen_miou(conf, [False, False, True])["mIoU-unseen"])


def test_trainer_picks_the_evaluator_by_type(dataset, tmp_path):
    from common import tiny_cfg

    img_dir = dataset[0]
    gt_dir = os.path.join(os.path.dirname(img_dir), "gt")
    plain = "tmpzs_plain_sem_seg_val"  # the same files without a split
    register_sem_seg(
        plain,
        lambda: list_sem_seg_files(plain, img_dir, gt_dir, image_ext="png"),
        stuff_classes=CLASSES,
        image_root=img_dir,
        sem_seg_root=gt_dir,
    )
    try:
        cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path))
        assert type(Trainer.build_evaluator(cfg, NAME)) is ZeroShotSemSegEvaluator
        assert isinstance(Trainer.build_evaluator(cfg, plain), SemSegEvaluator)
        with pytest.raises(ValueError, match="unseen_classes"):
            ZeroShotSemSegEvaluator(plain)
    finally:
        DatasetCatalog.remove(plain)
        MetadataCatalog.remove(plain)


class _Killed(BaseException):
    """Stands for a kill in the middle of a write."""


def _evaluate(img_dir, preds, out):
    ev = ZeroShotSemSegEvaluator(NAME, distributed=False, output_dir=str(out))
    ev.reset()
    for i, pred in enumerate(preds):
        logits = torch.nn.functional.one_hot(torch.as_tensor(pred), len(CLASSES)).permute(2, 0, 1)
        ev.process(
            [{"file_name": os.path.join(img_dir, f"{i}.png")}], [{"sem_seg": logits.float()}]
        )
    return ev.evaluate()


@pytest.mark.parametrize("killed_in", ["json", "torch"])
def test_a_killed_re_evaluation_keeps_the_earlier_outputs(
    dataset, tmp_path, monkeypatch, killed_in
):
    """sem_seg_predictions.json and sem_seg_evaluation.pth are replaced atomically: a kill
    while either is written leaves the earlier file, not an empty one."""
    import json

    img_dir, gts, preds = dataset
    out = tmp_path / "out"
    _evaluate(img_dir, preds, out)
    before = {
        n: (out / n).read_bytes() for n in ("sem_seg_predictions.json", "sem_seg_evaluation.pth")
    }
    assert all(before.values())

    def boom(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(*((json, "dumps", boom) if killed_in == "json" else (torch, "save", boom)))
    with pytest.raises(_Killed):
        _evaluate(img_dir, [(p + 1) % len(CLASSES) for p in preds], out)
    monkeypatch.undo()
    # the file being written when killed is the earlier one, whole
    name = "sem_seg_predictions.json" if killed_in == "json" else "sem_seg_evaluation.pth"
    assert (out / name).read_bytes() == before[name]
    assert not [f for f in os.listdir(out) if f.startswith(".")]
