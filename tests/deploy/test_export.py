"""Export of the tiny student with a baked-in vocabulary: TorchScript and ONNX Runtime parity with
the eager model at two input sizes (dynamic height/width), and the export tool."""

import json

import numpy as np
import pytest
import torch

from clipdistill.deploy import SegPredictor
from clipdistill.deploy import export as E
from common import tiny_cfg
from deploy_helpers import VOC20_TOY_CONFIG, load_tool

NAMES = ["cat", "dog", "potted plant", "sky"]
SIZES = [(64, 80), (96, 128)]
# max |logit difference| accepted between an export and the eager model (logits are O(10))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("export")
    predictor = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint), class_names=NAMES)
    module = E.ExportableSegmenter(predictor.model, predictor.class_names)
    example = torch.randint(0, 256, (1, 3, 128, 128)).float()  # traced at a third size
    ts_path = str(folder / "model.ts")
    E.export_torchscript(module, ts_path, example)
    onnx_path = E.export_onnx(module, str(folder / "model.onnx"), example)
    return predictor, module, ts_path, onnx_path


def test_torchscript_and_onnxruntime_match_eager(exported):
    predictor, module, ts_path, onnx_path = exported
    traced = E.load_torchscript(ts_path)
    assert not [k for k in traced.state_dict() if "teacher" in k]  # the teacher is left out
    assert torch.equal(traced.text_embeddings, predictor.model.text_embeddings(NAMES))
    runners = {
        "wrapper": E.torch_runner(module),
        "torchscript": E.torch_runner(traced),
        "onnxruntime": E.onnx_runner(E.onnx_session(onnx_path)),
    }
    parity = E.parity_check(predictor.model, runners, SIZES)
    for name, diffs in parity.items():
        assert set(diffs) == {"64x80", "96x128", "max"}
        assert diffs["max"] <= TOLERANCE, (name, diffs)


def test_export_batch_and_label_output(exported, tmp_path):
    predictor, module, ts_path, onnx_path = exported
    session = E.onnx_session(onnx_path)
    x = torch.randint(0, 256, (2, 3, 96, 64)).float()
    out = session.run(None, {"image": x.numpy()})[0]
    assert out.shape == (2, len(NAMES), 96, 64)
    labels_module = E.ExportableSegmenter(predictor.model, NAMES, output="labels")
    path = E.export_onnx(labels_module, str(tmp_path / "labels.onnx"), x[:1])
    labels = E.onnx_session(path).run(None, {"image": x.numpy()})[0]
    assert labels.shape == (2, 96, 64) and labels.dtype == np.int64
    assert (labels == out.argmax(1)).mean() > 0.999


def test_export_tool_writes_files_parity_and_timing(tmp_path, tiny_opts, capsys):
    tool = load_tool("export_model")
    out = tmp_path / "export"
    report = tmp_path / "bench.json"
    rc = tool.main(
        [
            "--config-file",
            VOC20_TOY_CONFIG,
            "--output",
            str(out),
            "--class-names",
            *NAMES,
            "--example-size",
            "64x64",
            "--bench-size",
            "64x96",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--tolerance",
            str(TOLERANCE),
            "--json",
            str(report),
            *tiny_opts,
        ]
    )
    assert rc == 0
    assert (out / "model.ts").is_file() and (out / "model.onnx").is_file()
    data = json.loads(report.read_text())
    assert data["class_names"] == NAMES
    assert set(data["parity_max_abs_diff"]) == {"torchscript", "onnxruntime"}
    assert all(d["max"] <= TOLERANCE for d in data["parity_max_abs_diff"].values())
    assert set(data["timing"]) >= {"eager", "torchscript", "onnxruntime", "size"}
    assert all(data["timing"][k]["median_ms"] > 0 for k in ("eager", "torchscript", "onnxruntime"))
    printed = capsys.readouterr().out
    assert "parity onnxruntime" in printed and "median of 2 interleaved runs" in printed
    side = json.loads((out / "export.json").read_text())
    assert side["class_names"] == NAMES and "logits" in side["output"]


def test_export_tool_rejects_bad_vocabulary(tmp_path, tiny_opts, capsys):
    tool = load_tool("export_model")
    rc = tool.main(
        [
            "--config-file",
            VOC20_TOY_CONFIG,
            "--output",
            str(tmp_path),
            "--class-names",
            "cat",
            "cat",
            *tiny_opts,
        ]
    )
    assert rc == 2 and "duplicated class names" in capsys.readouterr().err


def test_dynamo_onnx_exporter_matches_eager(exported, tmp_path):
    """The torch.export-based ONNX exporter (the default of recent PyTorch) works too, with
    dynamic height and width."""
    predictor, module, _, _ = exported
    example = torch.randint(0, 256, (1, 3, 64, 64)).float()
    path = E.export_onnx(module, str(tmp_path / "dynamo.onnx"), example, exporter="dynamo")
    runner = E.onnx_runner(E.onnx_session(path))
    parity = E.parity_check(predictor.model, {"dynamo": runner}, SIZES)
    assert parity["dynamo"]["max"] <= TOLERANCE, parity
