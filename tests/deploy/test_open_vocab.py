"""Open-vocabulary export (the vocabulary an input of the graph) and its torch-free runtime:
ONNX Runtime against PyTorch for two vocabularies of different K, the tokenizer token for token
against open_clip's, and the runtime's CLI in a subprocess where torch cannot be imported."""

import json
import os
import subprocess
import sys
import numpy as np
import torch

from clipdistill.deploy import SegPredictor
from clipdistill.deploy import export as E
from clipdistill.deploy.open_vocab import export_open_vocab
from clipdistill.deploy.runtime import Segmenter
from clipdistill.deploy.tokenizer import BPETokenizer

import pytest
from common import REPO, tiny_cfg, write_image

VOCABS = [
    ["cat", "dog", "potted plant"],
    ["sky", "Tree", "road", "person", "tv/monitor", "café", "dining table"],
]
RTOL = 1e-4


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("ov")
    # 14 templates: the runtime must ensemble them as TextEncoder does
    cfg = tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint, "MODEL.CLIPDISTILL.TEACHER.TEMPLATES", "vild")
    predictor = SegPredictor(cfg)
    export_open_vocab(predictor.model, str(folder), input_format=cfg.INPUT.FORMAT)
    return predictor.model, str(folder)


def test_folder_is_self_contained(exported):
    _, folder = exported
    meta = json.load(open(f"{folder}/deploy.json"))
    assert len(meta["templates"]) == 14 and meta["context_length"] == 77
    for key in ("student", "text", "bpe"):
        assert os.path.isfile(os.path.join(folder, meta[key]))


@pytest.mark.parametrize("names", VOCABS, ids=["K3", "K7"])
def test_runtime_matches_pytorch(exported, names):
    model, folder = exported
    seg = Segmenter(folder, resize=False)
    ref_text = model.text_embeddings(names).cpu().numpy()
    text = seg.text_embeddings(names)
    assert text.shape == ref_text.shape == (len(names), ref_text.shape[1])
    assert _rel(text, ref_text) <= RTOL
    assert seg.text_embeddings(list(names)) is text  # cached per vocabulary
    baked = E.ExportableSegmenter(model, names)  # the baked-in export path, tested against eager
    g = torch.Generator().manual_seed(len(names))
    for h, w in [(64, 80), (96, 72)]:
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        with torch.no_grad():
            ref = baked(image[None])[0].numpy()
        got = seg.logits(image.numpy(), names)
        assert got.shape == (len(names), h, w)
        assert _rel(got, ref) <= RTOL, _rel(got, ref)
        hwc = image.permute(1, 2, 0).numpy().astype(np.uint8)
        labels = seg.segment(hwc, names)
        assert labels.shape == (h, w) and labels.dtype == np.int64
        assert (labels == ref.argmax(0)).mean() > 0.999


@pytest.mark.parametrize(
    "src,dst", [((128, 128), (64, 64)), ((7, 12), (20, 5)), ((96, 240), (60, 150))]
)
def test_bilinear_resize_matches_torch(src, dst):
    from clipdistill.deploy.runtime import bilinear_resize

    x = np.random.default_rng(0).standard_normal((3, *src)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False
    )[0].numpy()
    got = bilinear_resize(x, *dst)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5


def test_segment_resizes_like_detectron2(tmp_path, tiny_checkpoint):
    """An image that the test-time resize enlarges (the testbed's 64 px -> 128): segment() brings
    the logits back bilinearly, as sem_seg_postprocess does, so its labels equal the evaluated
    model's (nearest-neighbour labels lost 0.6 mIoU on the testbed)."""
    from detectron2.data.detection_utils import read_image

    from clipdistill.data import SemSegDatasetMapper

    cfg = tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint, "INPUT.MIN_SIZE_TEST", "128")
    predictor = SegPredictor(cfg)
    folder = str(tmp_path / "ov")
    export_open_vocab(predictor.model, folder, input_format=cfg.INPUT.FORMAT)
    seg = Segmenter(folder)
    names = list(predictor.model.train_vocabulary)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = str(tmp_path / "x.png")
    write_image(path, image)
    mapped = SemSegDatasetMapper(cfg, False)({"file_name": path, "height": 64, "width": 80})
    assert tuple(mapped["image"].shape[-2:]) == (128, 160)
    with torch.no_grad():
        ref = predictor.model([mapped])[0]["sem_seg"].argmax(0).numpy()
    got = seg.segment(read_image(path, format="RGB"), names)
    assert got.shape == (64, 80) and (got == ref).mean() >= 0.999, (got == ref).mean()


@pytest.fixture(scope="module")
def exported_labels(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("ov_labels")
    predictor = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint))
    export_open_vocab(predictor.model, str(folder), output="labels", label_candidates=3)
    return predictor.model, str(folder)


@pytest.mark.parametrize("names", VOCABS, ids=["K3", "K7"])
def test_labels_export_matches_eager(exported_labels, names):
    """The graph's labels output (each pixel's candidate classes, K dynamic) equals the eager
    labels path and the argmax of the eager logits; the runtime's segment() uses it."""
    model, folder = exported_labels
    meta = json.load(open(f"{folder}/deploy.json"))
    assert meta["label_candidates"] == 3 and meta["student_output"].startswith("labels int64")
    seg = Segmenter(folder, resize=False)
    assert not seg.has_logits and [o.name for o in seg.student.get_outputs()] == ["labels"]
    eager_labels = E.ExportableSegmenter(model, names, output="labels", label_candidates=3)
    eager_logits = E.ExportableSegmenter(model, names)
    g = torch.Generator().manual_seed(len(names))
    for h, w in [(64, 80), (96, 72), (37, 53)]:
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        with torch.no_grad():
            ref = eager_labels(image[None])[0].numpy()
            full = eager_logits(image[None])[0].numpy().argmax(0)
        got = seg.labels(image.numpy(), names)
        assert got.shape == (h, w) and got.dtype == np.int64
        assert (got == ref).mean() > 0.999 and (got == full).mean() > 0.999
        hwc = image.permute(1, 2, 0).numpy().astype(np.uint8)
        assert np.array_equal(seg.segment(hwc, names), got)  # segment() runs the labels graph
    with pytest.raises(ValueError, match="labels only"):
        seg.logits(image.numpy(), names)


def test_labels_export_batch_and_parity_check(exported_labels):
    from clipdistill.deploy.open_vocab import parity_check_folder

    model, folder = exported_labels
    seg = Segmenter(folder, resize=False)
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 40, 48)).astype(np.float32)
    out = seg.student.run(None, {"image": x, "text": seg.text_embeddings(VOCABS[1])})[0]
    assert out.shape == (2, 40, 48) and out.min() >= 0 and out.max() < len(VOCABS[1])
    worst = parity_check_folder(model, folder, VOCABS, [(40, 48)])
    assert set(worst) == {"text", "labels"} and worst["labels"] <= 1e-3


def test_labels_export_quantises_to_int8(exported_labels, tmp_path):
    """--int8-images on a labels export: the labels computation (downstream of ``text``) stays
    float, the graph runs and gives valid labels (agreement with fp32: see the logits test)."""
    import shutil

    import onnx

    from clipdistill.deploy.quantize import INT8_STUDENT, quantize_student

    folder = str(tmp_path / "copy")
    shutil.copytree(exported_labels[1], folder)
    rng = np.random.default_rng(0)
    quantize_student(folder, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)])
    graph = onnx.load(os.path.join(folder, INT8_STUDENT)).graph
    assert {"QuantizeLinear", "DequantizeLinear", "TopK"} <= {n.op_type for n in graph.node}
    seg = Segmenter(folder, student=INT8_STUDENT, resize=False)
    got = seg.labels(rng.integers(0, 256, (3, 48, 40)).astype(np.float32), VOCABS[1])
    assert got.shape == (48, 40) and got.dtype == np.int64
    assert got.min() >= 0 and got.max() < len(VOCABS[1])


TRICKY = [
    "cat",
    "Potted Plant",
    "  many   spaces\t\n",
    "don't STOP!!",
    "&amp;lt;b&amp;gt; html &gt;",
    "naïve café Straße",
    "Ã©tÃ© (mojibake)",
    "日本語のテキスト",
    "Привет мир",
    "العربية",
    "emoji 🐱🐶",
    "tv/monitor, 12345.67",
    "<start_of_text>hi<end_of_text>",
    "x" * 300,
    " ".join(["word"] * 100),  # truncated: 77 tokens ending with <end_of_text>
]


def test_tokenizer_matches_open_clip():
    import open_clip
    from open_clip.tokenizer import default_bpe

    ref = open_clip.get_tokenizer("ViT-B-16")(TRICKY).numpy()
    got = BPETokenizer(default_bpe())(TRICKY)
    assert got.dtype == np.int64 and got.shape == ref.shape == (len(TRICKY), 77)
    assert ref[-1, -1] == got[-1, -1] == 49407  # truncated with <end_of_text>
    np.testing.assert_array_equal(got, ref)


NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from clipdistill.deploy.runtime import main
rc = main(sys.argv[1:])
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "detectron2")))
print("TORCH_MODULES", bad)
sys.exit(rc)
"""


def test_runtime_cli_imports_no_torch(exported, tmp_path):
    _, folder = exported
    image = tmp_path / "in.png"
    write_image(str(image), np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH,
            folder,
            str(image),
            str(out),
            "--class-names",
            "cat",
            "sky",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_MODULES []" in proc.stdout
    from PIL import Image

    assert Image.open(out).size == (56, 40)


# int8 against fp32 on the tiny *random* student. Random text vectors give near-ties everywhere
# (agreement 4-100 %), so the classes are prototypes taken from the student's own fp32 features
# (read through the graph with the identity as text), which gives the labels real margins.
# Measured: 0.981, 0.964, 0.969 (mean 0.972) with the text head in float; 0.02-0.11 when it was
# quantised. A trained student's parity is measured on the testbed with tools/eval_onnx.py
# (docs/DEPLOY.md), not here.
INT8_MIN_AGREEMENT = 0.95


def _features(session, x, dim):
    """Per-pixel student features [D, H, W] (up to the logit scale): logits for text = I_D."""
    return session.run(None, {"image": x, "text": np.eye(dim, dtype=np.float32)})[0][0]


def test_int8_student_runs_and_agrees_with_fp32(exported):
    from clipdistill.deploy.quantize import INT8_STUDENT, quantize_student

    _, folder = exported
    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    path = quantize_student(folder, calib)
    assert path.endswith(INT8_STUDENT) and os.path.isfile(path)
    fp32 = Segmenter(folder, resize=False)
    int8 = Segmenter(folder, student=INT8_STUDENT, resize=False)
    import onnx

    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    # onnxruntime fuses every convolution into QLinearConv (it could not while the exporter's
    # Identity nodes fed the biases: most convolutions ran in float between Q/DQ nodes), and the
    # text product is a MatMul (onnxruntime's Einsum is slow)
    import onnxruntime as ort

    fp32_convs = sum(
        n.op_type == "Conv"
        for n in onnx.load(os.path.join(folder, fp32.meta["student"])).graph.node
    )
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = os.path.join(folder, "int8.optimized.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    os.remove(opts.optimized_model_filepath)
    assert fp32_convs > 0 and optimized.count("QLinearConv") == fp32_convs, optimized
    assert "Conv" not in optimized and "Einsum" not in optimized and "MatMul" in optimized
    dim = fp32.text_embeddings(["cat"]).shape[1]
    agreement = []
    for seed in range(3):
        r = np.random.default_rng(seed)
        x = r.integers(0, 256, (1, 3, 64, 80)).astype(np.float32)
        feats = _features(fp32.student, x, dim).reshape(dim, -1)
        picks = r.choice(feats.shape[1], 7, replace=False)
        text = feats[:, picks].T.copy()
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        a = fp32.student.run(None, {"image": x, "text": text})[0]
        b = int8.student.run(None, {"image": x, "text": text})[0]
        assert b.shape == a.shape == (1, 7, 64, 80) and np.isfinite(b).all()
        assert np.unique(a.argmax(1)).size > 1
        agreement.append(float((a.argmax(1) == b.argmax(1)).mean()))
    print("int8 agreement", agreement)
    assert np.mean(agreement) >= INT8_MIN_AGREEMENT, agreement


def test_export_and_eval_tools(tmp_path, tiny_opts, capsys):
    from common import VOC20_TOY_CONFIG, load_tool, make_tiny_toy

    _, train, val = make_tiny_toy(tmp_path / "data", "ovexport")
    out = tmp_path / "deploy"
    rc = load_tool("export_open_vocab").main(
        ["--config-file", VOC20_TOY_CONFIG, "--output", str(out), "--int8-images", "3"]
        + ["--calib-dataset", train, "--parity-sizes", "48x64"]
        + list(tiny_opts)
    )
    assert rc == 0, capsys.readouterr()
    assert "parity" in capsys.readouterr().out
    for f in ("student.onnx", "student.int8.onnx", "text.onnx", "deploy.json"):
        assert (out / f).is_file(), f
    evaluate = load_tool("eval_onnx").main
    for student in ("student.onnx", "student.int8.onnx"):
        assert evaluate(["--folder", str(out), "--dataset", val, "--student", student]) == 0
        text = capsys.readouterr().out
        results = json.loads(text[text.index("{") :])
        assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0


def test_bench_backbones_tool(tmp_path, tiny_opts, capsys):
    from common import VOC20_TOY_CONFIG, load_tool

    out = tmp_path / "bb"
    rc = load_tool("bench_backbones").main(
        ["--config-file", VOC20_TOY_CONFIG, "--output", str(out), "--size", "64"]
        + ["--backbones", "test_efficientnet", "no_such_backbone", "--runs", "1", "--warmup", "0"]
        + ["--calib-images", "2"]
        + list(tiny_opts)
    )
    assert rc == 0
    report = json.load(open(out / "backbones.json"))["results"]
    assert "error" in report["no_such_backbone"]
    r = report["test_efficientnet"]
    assert set(r["latency"]) == {"eager", "onnx_fp32", "onnx_int8"}
    assert r["gmacs"] > 0 and all(v > 0 for v in r["gmac_per_s"].values())
    # CLIP's dense path, timed in the same rounds: speed-ups are its latency over each runner's
    ref = r["reference"]
    assert ref["name"] == "clip_dense" and ref["gmacs"] > 0
    for k, t in r["latency"].items():
        want = ref["latency"]["median_ms"] / t["median_ms"]
        assert r["speedup_vs_reference"][k] == pytest.approx(want)
        assert r["gmac_per_s_vs_reference"][k] == pytest.approx(
            r["gmac_per_s"][k] / ref["gmac_per_s"]
        )
    out = capsys.readouterr().out
    assert "| test_efficientnet |" in out and "clip_dense ms (same rounds)" in out


def test_web_demo_handler_runs_on_the_runtime(exported):
    from clipdistill.deploy.web import OnnxPredictor, segment_for_web

    _, folder = exported
    predictor = OnnxPredictor(folder, ["cat", "dog"])
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    overlay, legend, status = segment_for_web(predictor, image, "red circle, empty background")
    assert overlay is not None and overlay.shape[2] == 3, status
    assert predictor.class_names == ["red circle", "empty background"]
    assert "of 2 classes present" in status
    _, _, status = segment_for_web(predictor, image, "cat, cat")
    assert status.startswith("**Error:**")


def test_templates_with_articles_are_stored_for_the_runtime():
    import clipdistill.testbed  # noqa: F401  (registers the "caption" templates)
    from clipdistill.deploy.open_vocab import portable_templates
    from clipdistill.deploy.runtime import format_template
    from clipdistill.modeling.clip.text import PROMPT_TEMPLATES
    from clipdistill.utils.errors import ConfigError

    caption = PROMPT_TEMPLATES["caption"]
    stored = portable_templates(caption)
    for name in ("orange ring", "red star", "empty background"):
        assert format_template(stored[0], name) == caption[0](name)
    assert format_template(stored[0], "orange ring").startswith("an ")
    assert portable_templates(PROMPT_TEMPLATES["vild"]) == list(PROMPT_TEMPLATES["vild"])
    with pytest.raises(ConfigError, match="cannot be stored"):
        portable_templates([lambda n: n.upper()])
