"""tools/demo.py and SegPredictor on the tiny random student: outputs, vocabulary, bad input."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from clipdistill.data import SemSegDatasetMapper
from clipdistill.deploy import SegPredictor, parse_class_names
from clipdistill.modeling.clip.text import check_class_names
from clipdistill.utils.cli import split_config_overrides
from common import REPO, tiny_cfg, write_image
from deploy_helpers import VOC20_TOY_CONFIG, load_tool

demo = load_tool("demo")
NAMES = ["cat", "dog", "potted plant"]


def run_demo_cli(inputs, output, opts, *extra):
    argv = [
        "--config-file",
        VOC20_TOY_CONFIG,
        "--input",
        *inputs,
        "--output",
        str(output),
        "--no-progress",
        *extra,
        *opts,
    ]
    return demo.main(argv)


def test_demo_writes_label_maps_overlays_and_scores(tmp_path, images, tiny_opts):
    out = tmp_path / "out"
    rc = run_demo_cli(
        list(images.values()),
        out,
        tiny_opts,
        "--class-names",
        *NAMES,
        "--batch-size",
        "2",
        "--save-scores",
    )
    assert rc == 0
    vocab = json.loads((out / "classes.json").read_text())
    assert vocab["class_names"] == NAMES
    for stem, path in images.items():
        w, h = Image.open(path).size
        label_im = Image.open(out / f"{stem}_label.png")
        assert label_im.mode == "P" and label_im.size == (w, h)
        label = np.asarray(label_im)
        assert label.min() >= 0 and label.max() < len(NAMES)  # within the vocabulary
        palette = np.asarray(label_im.getpalette()[: 3 * len(NAMES)]).reshape(-1, 3)
        assert (palette == np.asarray(vocab["colors"])).all()  # viewers show the class colours
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == (w, h)
        scores = np.load(out / f"{stem}_scores.npz")
        assert list(scores["class_names"]) == NAMES
        s = scores["scores"].astype(np.float32)
        assert s.shape == (len(NAMES), h, w)
        assert np.allclose(s.sum(0), 1.0, atol=1e-2)
        assert (s.argmax(0) == label).mean() > 0.99  # float16 ties aside


def test_demo_default_vocabulary_is_the_training_one(tmp_path, images, tiny_opts):
    out = tmp_path / "out"
    assert run_demo_cli([images["a"]], out, tiny_opts) == 0
    vocab = json.loads((out / "classes.json").read_text())["class_names"]
    cfg = tiny_cfg()
    from detectron2.data import MetadataCatalog

    assert vocab == MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).stuff_classes
    assert np.asarray(Image.open(out / "a_label.png")).max() < len(vocab)
    assert not (out / "a_scores.npz").exists()


def test_demo_folder_glob_and_video(tmp_path, images, tiny_opts):
    video = str(tmp_path / "in" / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 40))
    assert writer.isOpened()
    for i in range(4):
        writer.write(np.full((40, 48, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    rc = run_demo_cli(
        [str(tmp_path / "in"), str(tmp_path / "in" / "*.png")],
        out,
        tiny_opts,
        "--class-names",
        "sky",
        "road",
        "--batch-size",
        "3",
    )
    assert rc == 0
    for stem in images:  # the folder and the glob name the same files: each is done once
        assert (out / f"{stem}_overlay.png").exists()
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 4 and frames[0].shape == (40, 48, 3)


def test_demo_skips_missing_and_unreadable_inputs(
    tmp_path, images, tiny_opts, log_messages, capsys
):
    bad = tmp_path / "in" / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    missing = str(tmp_path / "in" / "missing.png")
    out = tmp_path / "out"
    rc = run_demo_cli(
        [images["a"], missing, str(bad), images["b"]], out, tiny_opts, "--class-names", *NAMES
    )
    assert rc == 0  # the others succeeded
    assert (out / "a_overlay.png").exists() and (out / "b_overlay.png").exists()
    assert not (out / "broken_overlay.png").exists()
    text = "\n".join(log_messages)
    assert f"Skipping {missing}: no such file" in text
    assert f"Skipping {bad}: not a readable image" in text
    assert "2 of 4 inputs failed" in text and "2 of 4 inputs segmented" in text

    # every input failed: non-zero exit status and a final message
    rc = run_demo_cli([missing, str(bad)], tmp_path / "out2", tiny_opts)
    assert rc == 1
    assert "all 2 inputs failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "names, message",
    [
        (["cat", "cat"], "duplicated class names ['cat']"),
        (["cat", " dog", "dog "], "duplicated class names ['dog']"),
        (["cat", ""], "empty class name"),
        (["  "], "empty class name"),
    ],
)
def test_demo_rejects_bad_class_names(tmp_path, images, tiny_opts, capsys, names, message):
    rc = run_demo_cli([images["a"]], tmp_path / "out", tiny_opts, "--class-names", *names)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "a_overlay.png").exists()


def test_demo_class_names_option_needs_a_name(tmp_path, images, tiny_opts, capsys):
    with pytest.raises(SystemExit) as e:
        run_demo_cli([images["a"]], tmp_path / "out", tiny_opts, "--class-names")
    assert e.value.code == 2
    assert "--class-names" in capsys.readouterr().err


def test_demo_rejects_mismatching_or_missing_checkpoint(tmp_path, images, tiny_opts, capsys):
    rc = run_demo_cli(
        [images["a"]], tmp_path / "out", tiny_opts + ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not match the model" in err and "shape mismatches" in err
    opts = [o if not o.endswith(".pth") else o + ".nope" for o in tiny_opts]
    rc = run_demo_cli([images["a"]], tmp_path / "out", opts)
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_predictor_resizes_like_the_test_mapper(tmp_path, tiny_checkpoint):
    cfg = tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint, "INPUT.MIN_SIZE_TEST", "96")
    predictor = SegPredictor(cfg)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 150, 3), dtype=np.uint8)
    path = str(tmp_path / "x.png")
    write_image(path, image)
    mapper = SemSegDatasetMapper(cfg, False)
    mapped = mapper({"file_name": path, "height": 60, "width": 150})
    ours = predictor._to_input(image)
    assert torch.equal(mapped["image"], ours["image"])  # 96 x 240, same resize
    with torch.no_grad():
        ref = predictor.model([mapped])[0]["sem_seg"].argmax(0).numpy()
    res = predictor(image, scores=True)
    assert res.label.shape == (60, 150) and (res.label == ref).all()
    assert res.scores.shape == (20, 60, 150)
    # batched == one by one
    other = rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)
    batched = predictor.predict([image, other])
    assert (batched[0].label == res.label).all()
    assert (batched[1].label == predictor(other).label).all()


def test_class_name_checks_and_override_splitting():
    assert check_class_names([" cat", "potted plant "]) == ["cat", "potted plant"]
    assert parse_class_names("cat, potted plant ,dog") == ["cat", "potted plant", "dog"]
    for bad in ("", " , ", "cat,,dog", "cat, cat"):
        with pytest.raises(ValueError):
            parse_class_names(bad)
    # trailing overrides (train_net.py's convention): a config key ends the list of names, and
    # any other word is a name (an override's value may look like anything)
    args, opts = split_config_overrides(
        ["--class-names", "Seed", "cat", "MODEL.WEIGHTS", "m.pth", "OUTPUT_DIR", "--x", "--resume"]
    )
    assert args == ["--class-names", "Seed", "cat", "--resume"]
    assert opts == ["MODEL.WEIGHTS", "m.pth", "OUTPUT_DIR", "--x"]
    # the earlier form: everything after --opts (so any word before it is a name), deprecated
    args, opts = split_config_overrides(
        ["--class-names", "SEED", "cat", "--opts", "MODEL.WEIGHTS", "m.pth"], warn=False
    )
    assert args == ["--class-names", "SEED", "cat"] and opts == ["MODEL.WEIGHTS", "m.pth"]


@pytest.mark.parametrize("form", ["trailing", "--opts"])
def test_demo_command_line(tmp_path, images, tiny_opts, form):
    """The real command: KEY VALUE overrides last, following a list of class names (one a
    phrase), a missing input reported by name; the earlier form (overrides after --opts) still
    works, with a deprecation message."""
    out = tmp_path / "out"
    missing = str(tmp_path / "nope.jpg")
    proc = subprocess.run(
        [
            sys.executable,
            "tools/demo.py",
            "--config-file",
            VOC20_TOY_CONFIG,
            "--input",
            images["b"],
            missing,
            "--output",
            str(out),
            "--class-names",
            "cat",
            "potted plant",
            *(["--opts"] if form == "--opts" else []),
            *tiny_opts,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert json.loads((out / "classes.json").read_text())["class_names"] == ["cat", "potted plant"]
    assert (out / "b_label.png").exists() and (out / "b_overlay.png").exists()
    assert missing in log and "1 of 2 inputs failed" in log
    assert "segmenting" in log  # tqdm progress bar
    assert ("--opts is deprecated" in log) == (form == "--opts")


def test_predictor_feeds_bgr_models_bgr(tiny_checkpoint):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint))
    bgr = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint, "INPUT.FORMAT", "BGR"))
    assert torch.equal(bgr._to_input(image)["image"], rgb._to_input(image)["image"].flip(0))


def test_predictor_and_demo_with_a_training_free_segmenter(tmp_path, images):
    """The predictor and the demo talk to any segmenter through the interface: MaskCLIP (SCLIP's
    method) with free class names, no checkpoint (training-free)."""
    cfg_file = os.path.join(REPO, "configs", "maskclip", "sclip_toyclip_voc20toy.yaml")
    from clipdistill.config import get_clipdistill_cfg

    cfg = get_clipdistill_cfg(cfg_file)
    predictor = SegPredictor(cfg, class_names=NAMES)
    assert type(predictor.model).__name__ == "MaskCLIP"
    image = np.asarray(Image.open(images["b"]))
    res = predictor(image, scores=True)
    assert res.label.shape == image.shape[:2] and res.class_names == NAMES
    assert res.scores.shape == (len(NAMES), *image.shape[:2])
    scores = res.scores.numpy()  # computed on demand (ScoreMaps)
    np.testing.assert_array_equal(res.label, scores.argmax(0))
    # MaskCLIP's sem_seg are probabilities already: the scores are not softmaxed again
    np.testing.assert_allclose(scores.sum(0), 1.0, rtol=1e-5)
    assert scores.max() > 0.9 or scores.min() < 1e-3
    out = tmp_path / "out"
    argv = ["--config-file", cfg_file, "--input", images["a"], "--output", str(out)]
    assert demo.main(argv + ["--no-progress", "--class-names", *NAMES]) == 0
    assert (out / "a_label.png").exists()


def test_demo_default_vocabulary_is_the_test_sets_seen_and_unseen():
    """The web demo's default names: the config's test set (the testbed's 37, unseen included),
    not one world's names for every config."""
    from clipdistill.config import get_clipdistill_cfg
    from clipdistill.data.synthetic import DEFAULT_WORLD
    from clipdistill.deploy.predictor import evaluation_vocabulary

    testbed = get_clipdistill_cfg(f"{REPO}/configs/voc_toy.yaml", [])
    assert evaluation_vocabulary(testbed) == DEFAULT_WORLD.class_names
    assert set(DEFAULT_WORLD.unseen_classes) <= set(evaluation_vocabulary(testbed))
    voc = get_clipdistill_cfg(VOC20_TOY_CONFIG, [])
    names = evaluation_vocabulary(voc)
    assert names and "red striped patch" not in names
    assert evaluation_vocabulary(get_clipdistill_cfg(VOC20_TOY_CONFIG, ["DATASETS.TEST", "()"])) is None
