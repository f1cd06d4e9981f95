"""The testbed comparison (docs/COMPARISON.md, "The testbed"): every testbed config builds and
trains a few iterations or evaluates once on a tiny generated testbed, with the shipped ViT-8
testbed CLIP; tools/compare.py trains a 'train' entry per seed through tools/train_net.py and
reads every row from the evaluators' own results.json, checked against an independent
computation of seen / unseen mIoU and hIoU for one row."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from clipdistill.benchmark.compare import parse_entry, read_entries_file
from clipdistill.config import get_clipdistill_cfg
from clipdistill.data.datasets.common import datasets_root
from clipdistill.data.datasets.register_testbed import TESTBED_SUBDIR, register_testbed
from clipdistill.data.synthetic.writer import generate_testbed
from clipdistill.engine import Trainer
from common import CONFIGS, REPO, load_tool

VAL = "testbed_sem_seg_val"
TRAINED = {
    "san": "san/san_vit8_testbed.yaml",
    "ovseg": "ovseg/ovseg_r18_vit8_testbed.yaml",
}
TRAINING_FREE = {
    "maskclip": "maskclip/maskclip_vit8_testbed.yaml",
    "sclip": "maskclip/sclip_vit8_testbed.yaml",
    "clearclip": "maskclip/clearclip_vit8_testbed.yaml",
    "naclip": "maskclip/naclip_vit8_testbed.yaml",
    "value_only": "maskclip/value_only_vit8_testbed.yaml",
    "car": "car/car_vit8_testbed.yaml",
}
#: tiny runs: 2 iterations of 2 images, no worker processes, no prediction cache
TINY = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.PREDICTION_CACHE.ENABLED",
    "False",
]


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory):
    """A tiny generated testbed registered as the real ``testbed_sem_seg_{train,val}`` (and
    found by subprocesses through ``$DETECTRON2_DATASETS``); the registration is restored
    afterwards."""
    root = tmp_path_factory.mktemp("tbcmp")
    # three objects per image; with this seed 2 unseen classes are in the 3 val images
    generate_testbed(
        str(root / TESTBED_SUBDIR), num_train=6, num_val=3, size=64, seed=12,
        num_objects_p=(0, 0, 0, 1),
    )  # fmt: skip

    def reregister(path):
        for split in ("train", "val"):
            DatasetCatalog.remove(f"testbed_sem_seg_{split}")
            MetadataCatalog.remove(f"testbed_sem_seg_{split}")
        register_testbed("testbed", path)

    original = os.path.join(datasets_root(), TESTBED_SUBDIR)
    old_env = os.environ.get("DETECTRON2_DATASETS")
    reregister(str(root / TESTBED_SUBDIR))
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if old_env is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old_env
    reregister(original)


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """The configs name the shipped weights relative to the repository root."""
    monkeypatch.chdir(REPO)


def _results(output_dir):
    with open(os.path.join(output_dir, "inference", "results.json")) as f:
        (row,) = json.load(f)["results"]
    return row


def _check_zero_shot_row(row):
    assert row["dataset"] == VAL
    for m in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU"):
        assert 0.0 <= row[m] <= 100.0, (m, row)


@pytest.mark.parametrize("arch", sorted(TRAINED))
def test_trained_testbed_config_trains_and_evaluates(arch, tiny_testbed, tmp_path):
    cfg = get_clipdistill_cfg(
        os.path.join(CONFIGS, TRAINED[arch]), TINY + ["OUTPUT_DIR", str(tmp_path)]
    )
    assert cfg.DATASETS.TRAIN == ("testbed_sem_seg_train",) and cfg.DATASETS.TEST == (VAL,)
    trainer = Trainer(cfg)
    model = trainer.model
    # trained on the seen classes only: the training vocabulary is the split's seen names
    seen = MetadataCatalog.get("testbed_sem_seg_train").seen_classes
    assert len(seen) == 31 and list(model.train_vocabulary) == list(seen)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stem_stats = {
        id(m): m.running_mean.clone()
        for m in bn
        if not any(p.requires_grad for p in m.parameters())
    }
    assert stem_stats, "the ViT-8-testbed conv stem's BatchNorms are frozen"
    trainer.train()
    assert trainer.iter == 2  # two iterations ran
    # the frozen CLIP did not move, its BatchNorm statistics included
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for m in bn:
        if id(m) in stem_stats:
            assert torch.equal(m.running_mean, stem_stats[id(m)])
    Trainer.test(cfg, model)
    _check_zero_shot_row(_results(tmp_path))


@pytest.mark.parametrize("method", sorted(TRAINING_FREE))
def test_training_free_testbed_config_evaluates(method, tiny_testbed, tmp_path):
    cfg = get_clipdistill_cfg(
        os.path.join(CONFIGS, TRAINING_FREE[method]), TINY + ["OUTPUT_DIR", str(tmp_path)]
    )
    model = Trainer.build_model(cfg)
    Trainer.test(cfg, model)
    _check_zero_shot_row(_results(tmp_path))


def test_testbed_entries_file_names_every_config():
    entries = read_entries_file(os.path.join(CONFIGS, "compare", "testbed.txt"))
    files = {os.path.relpath(os.path.join(REPO, e.config_file), CONFIGS) for e in entries}
    assert set(TRAINED.values()) | set(TRAINING_FREE.values()) <= files
    trained = {e.label for e in entries if e.train}
    assert {"san-vit8", "ovseg-r18-vit8", "student-cnn4", "student-ce-control"} <= trained
    for e in entries:  # each entry's config builds its config (no download, no training)
        cfg = get_clipdistill_cfg(os.path.join(REPO, e.config_file), e.opts)
        assert cfg.DATASETS.TEST == (VAL,), e.label
    control = next(e for e in entries if e.label == "student-ce-control")
    cfg = get_clipdistill_cfg(os.path.join(REPO, control.config_file), control.opts)
    losses = cfg.MODEL.CLIPDISTILL.LOSS
    assert losses.CE_WEIGHT > 0 and not (
        losses.GLOBAL_WEIGHT or losses.LOCAL_WEIGHT or losses.DENSE_WEIGHT
    )


def test_parse_train_entry():
    e = parse_entry("train san=configs/san/san_vit8_testbed.yaml SOLVER.MAX_ITER 5")
    assert (e.train, e.label, e.opts) == (True, "san", ["SOLVER.MAX_ITER", "5"])
    assert not parse_entry("configs/car/car_vit8_testbed.yaml").train


def _independent_zero_shot(cfg):
    """Seen / unseen mIoU and hIoU of ``cfg``'s segmenter on the val set, computed here with
    numpy from its arg-max predictions and the label files: per class IoU over the classes
    present in the ground truth (detectron2's definition), means per group, harmonic mean."""
    from clipdistill.data import SemSegDatasetMapper

    model = Trainer.build_model(cfg).eval()
    meta = MetadataCatalog.get(VAL)
    names = list(meta.stuff_classes)
    unseen = np.array([n in set(meta.unseen_classes) for n in names])
    k = len(names)
    inter, pred_area, gt_area = np.zeros(k), np.zeros(k), np.zeros(k)
    mapper = SemSegDatasetMapper(cfg, False, dataset_names=[VAL])
    for record in DatasetCatalog.get(VAL):
        x = mapper(dict(record, dataset_name=VAL))
        with torch.no_grad():
            pred = model([x])[0]["sem_seg"].argmax(0).numpy()
        gt = np.array(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
        keep = gt != 255
        p, g = pred[keep], gt[keep]
        for c in range(k):
            inter[c] += np.sum((p == c) & (g == c))
            pred_area[c] += np.sum(p == c)
            gt_area[c] += np.sum(g == c)
    present = gt_area > 0
    iou = inter / np.maximum(gt_area + pred_area - inter, 1)
    seen_m = 100 * iou[present & ~unseen].mean()
    unseen_m = 100 * iou[present & unseen].mean()
    return {
        "mIoU": 100 * iou[present].mean(),
        "mIoU-seen": seen_m,
        "mIoU-unseen": unseen_m,
        "hIoU": 2 * seen_m * unseen_m / (seen_m + unseen_m),
    }


def test_compare_trains_per_seed_and_reads_results_json(tiny_testbed, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "cmp"
    entries = tmp_path / "entries.txt"
    entries.write_text(
        "# a trained and a training-free row\n\n"
        f"train san={CONFIGS}/san/san_vit8_testbed.yaml\n"
        f"sclip={CONFIGS}/maskclip/sclip_vit8_testbed.yaml OUTPUT_DIR {tmp_path / 'sclip'}\n"
        # training-free with a BatchNorm stem and no training vocabulary: timed with the test
        # set's names (the BatchNorm fold's check runs it before the timing)
        f"car={CONFIGS}/car/car_vit8_testbed.yaml OUTPUT_DIR {tmp_path / 'car'}\n"
    )
    argv = [
        "--entries-file", str(entries), "--output-dir", str(out), "--runs-dir", str(runs),
        "--seeds", "0", "1", "--size", "64", "96", "--no-test-resize-at", "96",
        "--iters", "1", "--warmup", "0",
        "--device", "cpu", "--skip-flops",
    ] + TINY  # fmt: skip
    assert load_tool("compare").main(argv) == 0
    result = json.loads((out / "comparison.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert result["datasets"] == [VAL] and result["meta"]["sizes"] == [64, 96]

    # the trained row: one train_net.py run per seed, the mean and std of their results.json
    san = rows["san"]
    assert san["trained"] and san["seeds"] == [0, 1] and san["accuracy_source"] == "trained"
    per_seed = [_results(runs / "san" / f"seed{s}") for s in (0, 1)]
    assert san["results_json"] == [
        str(runs / "san" / f"seed{s}" / "inference" / "results.json") for s in (0, 1)
    ]
    for m in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU"):
        values = [r[m] for r in per_seed]
        assert san["metrics"][VAL][m] == pytest.approx(np.mean(values))
        assert san["metrics_std"][VAL][m] == pytest.approx(np.std(values, ddof=1))
    assert (runs / "san" / "seed1" / "model_final.pth").is_file()
    # both sizes measured, the first one is the main row
    assert set(san["speed"]) == {"64", "96"}
    assert san["latency_ms"] == san["speed"]["64"]["latency_ms"]
    # at 64 after SAN's test-time resize (short side 128), at 96 as it is
    assert san["input"] == "1x3x128x128" and san["speed"]["96"]["input"] == "1x3x96x96"

    # the training-free row, against an independent computation of its metrics
    sclip = rows["sclip"]
    assert sclip["accuracy_source"] == "evaluated" and not sclip["trained"]
    cfg = get_clipdistill_cfg(os.path.join(CONFIGS, "maskclip", "sclip_vit8_testbed.yaml"), TINY)
    mine = _independent_zero_shot(cfg)
    for m, v in mine.items():
        assert sclip["metrics"][VAL][m] == pytest.approx(v, abs=1e-4), m

    md = (out / "comparison.md").read_text()
    for title in (f"mIoU {VAL}", f"seen {VAL}", f"unseen {VAL}", f"hIoU {VAL}", "images/s @96"):
        assert title in md
    assert f"{san['metrics'][VAL]['hIoU']:.2f} ± {san['metrics_std'][VAL]['hIoU']:.2f}" in md

    # a second run reuses both trainings and the evaluation (nothing is trained again)
    stamp = os.path.getmtime(runs / "san" / "seed0" / "model_final.pth")
    assert load_tool("compare").main(argv) == 0
    assert os.path.getmtime(runs / "san" / "seed0" / "model_final.pth") == stamp
    again = {r["label"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    assert rows["car"]["images_per_s"] > 0 and rows["car"]["metrics"][VAL]["mIoU"] >= 0
    assert again["sclip"]["accuracy_source"] == "results.json"
    assert again["san"]["metrics"] == san["metrics"]
