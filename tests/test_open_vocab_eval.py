"""One --eval-only run over several datasets, each scored with its own vocabulary."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from clipdistill.data.datasets.common import list_sem_seg_files, register_sem_seg
from clipdistill.data.datasets.register_voc import register_voc
from clipdistill.data.voc20_toy import generate_toy_voc
from clipdistill.engine import Trainer
from common import tiny_cfg

NAMES = ["tmpeval_a_sem_seg_train", "tmpeval_a_sem_seg_val", "tmpeval_b_sem_seg_val"]


@pytest.fixture
def two_datasets(tmp_path):
    voc = str(tmp_path / "VOC2012")
    generate_toy_voc(voc, num_train=2, num_val=3, size=64, seed=1)
    register_voc("tmpeval_a", voc, "")
    # dataset b: same images, a 3-class vocabulary (labels = VOC-20 index mod 3)
    gt_b = tmp_path / "b_labels"
    gt_b.mkdir()
    src = os.path.join(voc, "annotations_detectron2", "val")
    for f in os.listdir(src):
        lab = np.asarray(Image.open(os.path.join(src, f)))
        Image.fromarray(np.where(lab == 255, 255, lab % 3).astype(np.uint8)).save(gt_b / f)
    image_root = os.path.join(voc, "JPEGImages")
    register_sem_seg(
        NAMES[2],
        lambda: list_sem_seg_files(NAMES[2], image_root, str(gt_b)),
        stuff_classes=["red thing", "blue thing", "green thing"],
        image_root=image_root,
        sem_seg_root=str(gt_b),
    )
    yield
    for n in NAMES:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_eval_several_datasets_one_table(two_datasets, tmp_path):
    cfg = tiny_cfg(
        "DATASETS.TRAIN",
        f"('{NAMES[0]}',)",
        "DATASETS.TEST",
        f"('{NAMES[1]}', '{NAMES[2]}')",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "DATALOADER.NUM_WORKERS",
        "0",
    )
    model = build_model(cfg).eval()
    calls = []
    compute = model.teacher.text_encoder.compute

    def counting(names):
        calls.append(tuple(names))
        return compute(names)

    model.teacher.text_encoder.compute = counting
    results = Trainer.test(cfg, model)
    assert set(results) == {NAMES[1], NAMES[2]}
    # each dataset evaluated over its own classes
    assert "IoU-aeroplane" in results[NAMES[1]]["sem_seg"]
    assert "IoU-green thing" in results[NAMES[2]]["sem_seg"]
    assert "IoU-aeroplane" not in results[NAMES[2]]["sem_seg"]
    # text embeddings computed once per vocabulary, not once per image
    assert sorted(len(c) for c in calls) == [3, 20]
    out = tmp_path / "out" / "inference"
    payload = json.loads((out / "results.json").read_text())
    assert [r["dataset"] for r in payload["results"]] == NAMES[1:]
    assert payload["results"][1]["mIoU"] == pytest.approx(results[NAMES[2]]["sem_seg"]["mIoU"])
    assert "detectron2_version" in payload
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["dataset"] for r in rows] == NAMES[1:] and set(rows[0]) >= {"mIoU", "pACC"}
    # per-dataset prediction files do not overwrite each other
    assert (out / NAMES[1] / "sem_seg_predictions.json").exists()
    assert (out / NAMES[2] / "sem_seg_predictions.json").exists()
