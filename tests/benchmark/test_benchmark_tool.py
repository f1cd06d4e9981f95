"""tools/benchmark.py on the tiny offline config: runs, prints a table, writes JSON with every
field (speed itself is measured by the command, never asserted by a test)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from clipdistill.benchmark import INFERENCE_FIELDS, TRAINING_FIELDS
from common import REPO, TINY_OPTS, VOC20_TOY_CONFIG


def _number(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def test_benchmark_command_writes_complete_json(tmp_path):
    out = tmp_path / "bench" / "result.json"
    cmd = [
        sys.executable,
        "tools/benchmark.py",
        "--config-file",
        VOC20_TOY_CONFIG,
        "--device",
        "cpu",
        "--size",
        "64",
        "--batch-size",
        "2",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--train-batch-size",
        "2",
        "--train-size",
        "64",
        "--output",
        str(out),
        "--segmenter-config",
        os.path.join(REPO, "configs", "maskclip", "sclip_toyclip_voc20toy.yaml"),
    ] + TINY_OPTS
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "images/s" in p.stdout and "s/iter" in p.stdout and "GMACs" in p.stdout
    res = json.loads(out.read_text())

    meta = res["meta"]
    assert meta["device"] == "cpu" and meta["size"] == 64 and meta["batch_size"] == 2
    assert "multiply-add" in meta["flop_convention"]
    assert meta["command"].startswith("python tools/benchmark.py")

    names = [r["name"] for r in res["inference"]]
    # each segmenter from its own config: the main config's and the extra one
    for expected in [
        "SegStudent",
        "MaskCLIP",
        "CLIP teacher global (encode_image)",
        "CLIP teacher dense (encode_image_dense)",
    ]:
        assert expected in names
    for row in res["inference"]:
        assert set(INFERENCE_FIELDS) <= set(row), row
        for k in (
            "params_m",
            "gflops_per_image",
            "latency_ms",
            "latency_ms_min",
            "images_per_s",
            "peak_mem_mb",
        ):
            assert _number(row[k]), (row["name"], k, row[k])
        assert row["params_m"] > 0 and row["gflops_per_image"] > 0 and row["images_per_s"] > 0
    student = res["inference"][names.index("SegStudent")]
    assert student["input"] == "2x3x64x64"
    # the student's count leaves the teacher out; the teacher rows count the image tower
    assert student["params_m"] < 0.2 < student["params_total_m"]
    maskclip = res["inference"][names.index("MaskCLIP")]
    teacher_dense = res["inference"][names.index("CLIP teacher dense (encode_image_dense)")]
    # MaskCLIP runs the CLIP image tower per image (its text tower's output is cached)
    assert maskclip["params_m"] == teacher_dense["params_m"] < maskclip["params_total_m"]

    assert [r["name"] for r in res["training"]] == ["ce_only", "distill_online", "distill_cached"]
    for row in res["training"]:
        assert set(TRAINING_FIELDS) <= set(row), row
        assert _number(row["s_per_iter"]) and row["s_per_iter"] > 0
        assert _number(row["peak_mem_mb"])
        assert all(math.isfinite(v) for v in row["losses"].values())
    assert set(res["training"][0]["losses"]) == {"loss_ce"}
    assert {"loss_global", "loss_local"} <= set(res["training"][2]["losses"])

    assert _number(res["cache_warp_ms_per_image"])
    assert meta["segmenter"] == "SegStudent"
    assert set(res["ratios"]) == {
        "segmenter_vs_teacher_dense_throughput",
        "distill_cached_vs_ce_step",
        "distill_online_vs_ce_step",
    }  # measurements only: goals are the docs' business
    assert all(_number(v) for v in res["ratios"].values())


def test_training_benchmark_of_an_architecture_that_does_not_distil():
    """The training benchmark takes any architecture: SAN is measured once, as configured (it
    has no distillation modes), MaskCLIP (nothing to train) gives no row."""
    from clipdistill.benchmark.training import bench_training, training_modes
    from clipdistill.config import get_clipdistill_cfg
    from common import TINY_SAN_OPTS

    san = get_clipdistill_cfg(os.path.join(REPO, "configs", "san", "san_toy.yaml"), TINY_SAN_OPTS)
    assert list(training_modes(san)) == ["configured"]
    row = bench_training(san, "configured", "cpu", batch_size=1, size=64, iters=1, warmup=0)
    assert row["name"] == "configured" and row["s_per_iter"] > 0
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(row["losses"])
    maskclip = get_clipdistill_cfg(
        os.path.join(REPO, "configs", "maskclip", "sclip_toyclip_voc20toy.yaml"), TINY_OPTS
    )
    assert bench_training(maskclip, "configured", "cpu", 1, 64, 1, 0) is None


def test_autocast_option_measures_under_mixed_precision(tmp_path):
    """--autocast bfloat16 (on the CPU here; float16/bfloat16 on a GPU in scripts/check_gpu.sh):
    the run completes under torch.autocast and records the dtype."""
    out = tmp_path / "amp.json"
    cmd = [sys.executable, "tools/benchmark.py", "--config-file", VOC20_TOY_CONFIG, "--device",
           "cpu", "--size", "64", "--iters", "1", "--warmup", "1", "--skip-training",
           "--skip-flops", "--autocast", "bfloat16", "--output", str(out)] + TINY_OPTS
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["meta"]["autocast"] == "bfloat16"
    assert res["inference"] and all(_number(r["latency_ms"]) for r in res["inference"])


def test_vocabulary_sweep_goes_beyond_150_names_on_both_paths():
    from clipdistill.benchmark.run import sweep_names, vocabulary_sweep
    from common import tiny_cfg

    names = sweep_names(1000)
    assert len(set(names)) == 1000 and names[0] == "wall" and names[-1] == "thing 1000"
    rows = vocabulary_sweep([tiny_cfg()], sizes=[32], vocabulary_sizes=[3, 160], iters=1, warmup=0)
    assert [(r["vocabulary"], r["path"]) for r in rows] == [
        (3, "logits"),
        (3, "labels"),
        (160, "logits"),
        (160, "labels"),
    ]
    assert all(_number(r["latency_ms"]) and r["size"] == 32 for r in rows)


def test_vocabulary_sweep_times_a_training_free_segmenter():
    """A training-free segmenter (CaR) has no vocabulary of its own: the sweep gives it one before
    the BatchNorm fold runs it (it failed with "CaR has no vocabulary")."""
    from clipdistill.benchmark.run import vocabulary_sweep
    from clipdistill.config import get_clipdistill_cfg
    from common import CONFIGS

    cfg = get_clipdistill_cfg(
        os.path.join(CONFIGS, "car", "car_toyclip_voc20toy.yaml"),
        ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.CLIPDISTILL.FOLD_BN", "True"],
    )
    rows = vocabulary_sweep([cfg], sizes=[32], vocabulary_sizes=[2], iters=1, warmup=0)
    assert [(r["name"], r["vocabulary"]) for r in rows] == [("CaR", 2)] * 2
    assert all(_number(r["latency_ms"]) for r in rows)


def test_label_agreement_tool_counts_identical_pixels(tmp_path):
    """--label-agreement: per vocabulary and candidate count, identical pixels out of all (the
    figures themselves are documented, not asserted: a random tiny student)."""
    from common import load_tool, make_tiny_toy, tiny_train_opts

    _, train, val = make_tiny_toy(tmp_path / "data", "agree", num_val=2, size=40)
    out = tmp_path / "agree.json"
    rc = load_tool("benchmark").main(
        ["--config-file", VOC20_TOY_CONFIG, "--label-agreement", val]
        + ["--agreement-candidates", "1,4", "--agreement-vocabularies", "30"]
        + ["--output", str(out)]
        + tiny_train_opts(train, val, str(tmp_path / "o"))
    )
    assert rc == 0
    rows = json.load(open(out))["label_agreement"]
    assert [(r["candidates"], r["images"]) for r in rows] == [(1, 2), (4, 2)] * 2
    assert rows[-1]["vocabulary"] == 30 and rows[0]["vocabulary"] < 30
    for r in rows:
        assert 0 < r["identical"] <= r["pixels"] and r["fraction"] == r["identical"] / r["pixels"]


def test_vocabulary_sweep_on_a_datasets_names_and_image(tmp_path):
    """--sweep-dataset: the dataset's class names (then generated ones) and its first image,
    resized to each sweep size, are what the segmenter is timed on."""
    from clipdistill.benchmark.run import dataset_sweep_source, sweep_names
    from clipdistill.modeling.segmenter import dataset_vocabulary
    from common import load_tool, make_tiny_toy, tiny_cfg, tiny_train_opts

    assert sweep_names(3, ["a", "b"]) == ["a", "b", "thing 3"]
    assert sweep_names(1, ["a", "b"]) == ["a"]
    _, train, val = make_tiny_toy(tmp_path / "data", "sweepds", num_val=2, size=40)
    names, image = dataset_sweep_source(tiny_cfg(), val)
    assert names == dataset_vocabulary(val) and len(names) > 2
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 40) and image.float().std() > 0
    out = tmp_path / "sweep.json"
    k = len(names) + 2
    rc = load_tool("benchmark").main(
        ["--config-file", VOC20_TOY_CONFIG, "--vocabulary-sweep", f"2,{k}"]
        + ["--sweep-dataset", val, "--sweep-sizes", "48", "--iters", "1", "--warmup", "0"]
        + ["--output", str(out)]
        + tiny_train_opts(train, val, str(tmp_path / "o"))
    )
    assert rc == 0
    rows = json.load(open(out))["vocabulary_sweep"]
    assert [(r["vocabulary"], r["size"]) for r in rows] == [(2, 48)] * 2 + [(k, 48)] * 2
    assert "--sweep-dataset" in json.load(open(out))["command"]


def test_sweep_dataset_without_images_is_one_line(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from clipdistill.benchmark.run import dataset_sweep_source
    from clipdistill.utils.errors import DataError
    from common import tiny_cfg

    DatasetCatalog.register("sweep_empty_ds", lambda: [])
    MetadataCatalog.get("sweep_empty_ds").set(stuff_classes=["a", "b"])
    with pytest.raises(DataError, match="sweep_empty_ds"):
        dataset_sweep_source(tiny_cfg(), "sweep_empty_ds")
