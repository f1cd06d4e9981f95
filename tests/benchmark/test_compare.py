"""tools/compare.py on the toy set: the distilled student and a training-free MaskCLIP segmenter,
each built from its own config, evaluated by Trainer.test and measured by the benchmark harness,
in one table (Markdown, JSON, CSV) and one plot."""

import importlib.util
import json
import os

import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from clipdistill.benchmark.compare import parse_entry
from clipdistill.data.datasets.register_voc import register_voc
from clipdistill.data.voc20_toy import generate_toy_voc
from common import CONFIGS, REPO, TINY_OPTS, VOC20_TOY_CONFIG

VAL = "tmpcompare_sem_seg_val"


@pytest.fixture(scope="module")
def compare_tool():
    spec = importlib.util.spec_from_file_location(
        "compare_tool", os.path.join(REPO, "tools", "compare.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy_val(tmp_path_factory):
    voc = str(tmp_path_factory.mktemp("compare") / "VOC2012")
    generate_toy_voc(voc, num_train=1, num_val=3, size=64, seed=7)
    register_voc("tmpcompare", voc, "")
    yield
    for split in ("train", "val"):
        DatasetCatalog.remove(f"tmpcompare_sem_seg_{split}")
        MetadataCatalog.remove(f"tmpcompare_sem_seg_{split}")


def test_parse_entry():
    e = parse_entry("student=configs/voc.yaml MODEL.WEIGHTS 'a b.pth'")
    assert (e.label, e.config_file, e.opts) == (
        "student",
        "configs/voc.yaml",
        ["MODEL.WEIGHTS", "a b.pth"],
    )
    assert parse_entry("configs/maskclip/sclip_vitb16.yaml").label == "sclip_vitb16"
    with pytest.raises(ValueError, match="KEY VALUE"):
        parse_entry("configs/voc.yaml MODEL.WEIGHTS")


def test_student_and_maskclip_in_one_table_and_plot(compare_tool, toy_val, tmp_path):
    out = tmp_path / "cmp"
    common = TINY_OPTS + [
        "DATASETS.TEST",
        f"('{VAL}',)",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    flags = [
        "--output-dir",
        str(out),
        "--entry",
        f"student={VOC20_TOY_CONFIG} OUTPUT_DIR {tmp_path / 'student'}",
        "--entry",
        f"sclip={CONFIGS}/maskclip/sclip_toyclip_voc20toy.yaml OUTPUT_DIR {tmp_path / 'mc'}",
        "--size",
        "64",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
    ]
    assert compare_tool.main(flags + common) == 0
    res = json.loads((out / "comparison.json").read_text())
    assert res["datasets"] == [VAL]
    rows = {r["label"]: r for r in res["rows"]}
    assert set(rows) == {"student", "sclip"}
    assert rows["student"]["meta_arch"] == "SegStudent" and rows["sclip"]["meta_arch"] == "MaskCLIP"
    for label, sub in (("student", "student"), ("sclip", "mc")):
        r = rows[label]
        assert r["accuracy_source"] == "evaluated"
        written = json.loads((tmp_path / sub / "inference" / "results.json").read_text())
        assert r["miou"][VAL] == pytest.approx(written["results"][0]["mIoU"])
        assert 0 <= r["miou"][VAL] <= 100
        assert r["gflops_per_image"] > 0 and r["images_per_s"] > 0 and r["latency_ms"] > 0
        # the text side is not per-image cost: fewer per-image than total parameters
        assert 0 < r["params_m"] < r["params_total_m"]
        assert r["input"] == "1x3x64x64"
    md = (out / "comparison.md").read_text()
    assert f"mIoU {VAL}" in md and "| student |" in md and "| sclip |" in md
    csv_lines = (out / "comparison.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("segmenter,")
    with Image.open(out / "comparison.png") as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]

    # a second run reads the written results instead of evaluating again
    assert compare_tool.main(flags + ["--evaluate", "never", "--skip-flops"] + common) == 0
    again = {r["label"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    for label in rows:
        assert again[label]["accuracy_source"] == "results.json"
        assert again[label]["miou"] == rows[label]["miou"]


def test_bad_entry_is_a_one_line_error(compare_tool, tmp_path, capsys):
    code = compare_tool.main(["--output-dir", str(tmp_path), "--entry", "nope.yaml"])
    assert code == 2 and "nope.yaml" in capsys.readouterr().err
