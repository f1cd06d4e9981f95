"""The embedded default, end to end through the command-line tools (subprocesses):
generate the toy dataset, train, evaluate, re-evaluate the checkpoint with --eval-only, render,
and a 2-process CPU (gloo) run."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from common import REPO
from clipdistill.utils.visualize import load_sem_seg_predictions

CFG = os.path.join(REPO, "configs", "voc_toy.yaml")
TOY_ITERS = 200


def _run(args, env, timeout=900):
    proc = subprocess.run(
        [sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    env = dict(os.environ, DETECTRON2_DATASETS=str(root / "datasets"), HF_HUB_OFFLINE="1")
    _run(["tools/make_toy_dataset.py"], env)
    out = root / "train"
    _run(
        [
            "tools/train_net.py",
            "--config-file",
            CFG,
            "SOLVER.MAX_ITER",
            str(TOY_ITERS),
            "OUTPUT_DIR",
            str(out),
        ],
        env,
    )
    return root, env, out


def _metrics(out):
    with open(out / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_loss_falls(toy):
    _, _, out = toy
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert len(rows) >= 3
    first, last = rows[0], rows[-1]
    assert last["total_loss"] < 0.7 * first["total_loss"], (first, last)
    assert last["loss_ce"] < 0.5 * first["loss_ce"], (first, last)
    for k in ("loss_ce", "loss_global", "loss_local"):
        assert k in last


def _independent_miou(pred_json, dataset_root, num_classes=20, ignore=255):
    preds = load_sem_seg_predictions(pred_json)
    conf = np.zeros((num_classes, num_classes), np.int64)  # [gt, pred]
    for file_name, pred in preds.items():
        stem = os.path.splitext(os.path.basename(file_name))[0]
        gt_path = os.path.join(dataset_root, "annotations_detectron2", "val", stem + ".png")
        gt = np.asarray(Image.open(gt_path)).astype(np.int64)
        valid = gt != ignore
        assert (pred[valid] >= 0).all(), "a labelled pixel has no prediction"
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    tp = np.diag(conf)
    gt_count = conf.sum(1)
    union = gt_count + conf.sum(0) - tp
    present = gt_count > 0
    return 100 * np.mean(tp[present] / union[present]), len(preds)


def test_miou_matches_independent_computation_and_beats_chance(toy):
    root, _, out = toy
    res = torch.load(out / "inference" / "sem_seg_evaluation.pth", weights_only=False)
    voc = root / "datasets" / "voc_toy" / "VOCdevkit" / "VOC2012"
    miou, n = _independent_miou(str(out / "inference" / "sem_seg_predictions.json"), str(voc))
    assert n == 24
    assert res["mIoU"] == pytest.approx(miou, abs=1e-6)
    # 6 classes are drawn in the toy images; uniform guessing over the 20 VOC classes scores
    # about 100/20/... < 5 mIoU. The trained student must be far above that.
    print(f"toy mIoU after {TOY_ITERS} iterations: {miou:.2f}")
    assert miou > 50.0


def test_eval_only_reproduces_training_metrics(toy):
    _, env, out = toy
    ev = out.parent / "eval"
    _run(
        [
            "tools/train_net.py",
            "--config-file",
            CFG,
            "--eval-only",
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "OUTPUT_DIR",
            str(ev),
        ],
        env,
    )
    a = torch.load(out / "inference" / "sem_seg_evaluation.pth", weights_only=False)
    b = torch.load(ev / "inference" / "sem_seg_evaluation.pth", weights_only=False)
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], k


def test_eval_only_rejects_mismatching_checkpoint(toy):
    _, env, out = toy
    proc = subprocess.run(
        [
            sys.executable,
            "tools/train_net.py",
            "--config-file",
            CFG,
            "--eval-only",
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "MODEL.SEM_SEG_HEAD.CONVS_DIM",
            "32",
            "OUTPUT_DIR",
            str(out.parent / "bad_eval"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "does not match the model" in proc.stderr and "shape mismatches" in proc.stderr


def test_render_predictions(toy):
    _, env, out = toy
    viz = out.parent / "viz"
    _run(
        [
            "tools/visualize_json_results.py",
            "--input",
            str(out / "inference" / "sem_seg_predictions.json"),
            "--output",
            str(viz),
            "--dataset",
            "voc20_toy_sem_seg_val",
            "--limit",
            "3",
        ],
        env,
    )
    files = sorted(viz.glob("*.png"))
    assert len(files) == 3
    im = Image.open(files[0])
    assert im.size[1] == 128 and im.size[0] > 3 * 128  # image | prediction | ground truth


def test_two_process_cpu_training(toy):
    """--num-gpus 2 on a CPU-only machine: two gloo processes, DDP, gathered InfoNCE."""
    _, env, out = toy
    ddp = out.parent / "ddp"
    _run(
        [
            "tools/train_net.py",
            "--config-file",
            CFG,
            "--num-gpus",
            "2",
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.IMS_PER_BATCH",
            "4",
            "OUTPUT_DIR",
            str(ddp),
        ],
        env,
    )
    # detectron2's default_setup logs the world size of every process
    assert "World size: 2" in (ddp / "log.txt").read_text()
    assert (ddp / "model_final.pth").exists()
    rows = [r for r in _metrics(ddp) if "total_loss" in r]
    assert rows and all(math.isfinite(r["total_loss"]) for r in rows)
    assert (ddp / "log.txt.rank1").exists()  # the second process ran and logged
