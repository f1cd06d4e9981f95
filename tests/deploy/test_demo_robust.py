"""Demo inputs and outputs beyond the ordinary: 16-bit images are scaled (not clamped to white),
non-Latin class names are drawn with a font that has their glyphs (or a warning names what to
install), and a full disk stops the run with one line naming the folder, what was done listed
and no partial file left."""

import logging
import os

import cv2
import numpy as np
from PIL import Image

from clipdistill.deploy.predictor import read_image_rgb, to_rgb_uint8
from clipdistill.utils import visualize as V
from common import fresh_loggers  # noqa: F401  (autouse fixture)
from common import file_size_limit
from deploy_helpers import VOC20_TOY_CONFIG, ListHandler, load_tool

demo = load_tool("demo")


def test_16_bit_images_are_scaled_not_clamped(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")  # PIL mode I;16
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])  # 48-bit RGB PNG
    want_grey = np.round(grey16 / 257.0).astype(np.uint8)
    got = read_image_rgb(str(tmp_path / "g16.png"))
    assert got.dtype == np.uint8 and got.shape == (20, 30, 3)
    assert np.abs(got[..., 0].astype(int) - want_grey).max() <= 1
    got = read_image_rgb(str(tmp_path / "c16.png"))
    assert np.abs(got.astype(int) - np.round(rgb16 / 257.0)).max() <= 1
    # arrays handed to the predictor directly (web demo, API)
    assert np.abs(to_rgb_uint8(rgb16).astype(int) - np.round(rgb16 / 257.0)).max() <= 1
    assert to_rgb_uint8(np.full((2, 2), 32768, np.int32)).max() == 128


def test_demo_on_a_16_bit_png(tmp_path, tiny_opts):
    Image.fromarray(np.full((40, 50), 20000, np.uint16)).save(tmp_path / "dark16.png")
    out = tmp_path / "out"
    argv = ["--config-file", VOC20_TOY_CONFIG, "--input", str(tmp_path / "dark16.png")]
    argv += ["--output", str(out), "--no-progress", "--alpha", "0", *tiny_opts]
    assert demo.main(argv) == 0
    overlay = np.asarray(Image.open(out / "dark16_overlay.png"))
    # alpha 0: the overlay shows the image itself, 20000/65535 of white, not clamped to 255
    assert abs(int(np.median(overlay)) - round(20000 / 257)) <= 1


def _legend(names, label):
    colors = V.class_colors(len(names))
    image = np.zeros(label.shape + (3,), np.uint8)
    return V.overlay_with_legend(image, label, names, colors, alpha=0.0)


def test_non_latin_class_names_get_a_font_with_their_glyphs():
    label = np.zeros((120, 160), np.int64)
    label[60:] = 1
    # Cyrillic and accented Latin: Pillow's default font lacks them, DejaVu (shipped with
    # matplotlib, a detectron2 dependency) has them
    for names in (["кошка", "собака"], ["café", "crème"]):
        font = V.font_for("".join(names), 20)
        assert all(V._has_glyph(getattr(font, "path", ""), c) for c in "".join(names))
        boxes = V._load_font("", 20)
        assert not all(V._has_glyph("", c) for c in "".join(names))
        assert font is not boxes
        with_font = _legend(names, label)
        assert with_font.any()
    # Chinese: drawn with a CJK font when one is installed (Noto CJK: scripts/install_fonts.sh)
    cjk = [f for f in V._font_files() if V._has_glyph(f, "猫")]
    font = V.font_for("猫 狗", 20)
    if cjk:
        assert V._has_glyph(font.path, "猫") and V._has_glyph(font.path, "狗")


def test_missing_cjk_font_warns_and_still_draws(monkeypatch):
    monkeypatch.setattr(V, "_font_files", lambda: [])
    monkeypatch.setattr(V, "_warned_glyphs", set())
    handler = ListHandler()
    logging.getLogger(V.__name__).addHandler(handler)
    try:
        label = np.zeros((80, 80), np.int64)
        out = _legend(["猫"], label)
        _legend(["猫"], label)  # warned once only
    finally:
        logging.getLogger(V.__name__).removeHandler(handler)
    assert out.shape == (80, 80, 3) and out.any()
    warnings = [m for m in handler.messages if "fonts-noto-cjk" in m]
    assert len(warnings) == 1 and "猫" in warnings[0]


def test_full_disk_stops_with_one_line_lists_what_was_done(tmp_path, tiny_opts, capsys):
    rng = np.random.default_rng(0)
    small = tmp_path / "in" / "a_small.png"
    big = tmp_path / "in" / "b_big.png"
    small.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(small)
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "out"
    argv = ["--config-file", VOC20_TOY_CONFIG, "--input", str(small), str(big)]
    argv += ["--output", str(out)]
    argv += ["--no-progress", "--save-scores", *tiny_opts]
    handler = ListHandler()
    logging.getLogger("clipdistill.demo").addHandler(handler)
    try:
        with file_size_limit(20_000):  # the big image's overlay does not fit
            rc = demo.main(argv)
    finally:
        logging.getLogger("clipdistill.demo").removeHandler(handler)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2 and "Traceback" not in err
    assert lines[-1].startswith("demo.py: error: ") and str(out) in lines[-1]
    assert any(str(small) in m and "done before the stop" in m for m in handler.messages)
    files = sorted(os.listdir(out))
    assert not [f for f in files if f.startswith(".")]  # no temporary file left
    assert not [f for f in files if f.startswith("b_big")]  # nothing of the failed image
    assert {"a_small_label.png", "a_small_overlay.png", "a_small_scores.npz"} <= set(files)


def test_an_image_the_model_cannot_take_is_skipped_and_the_others_done(tmp_path, tiny_opts):
    """A 3000x8 image (its short side resized to the test size makes the long side too long for
    the model) is skipped with one warning line naming it; the other images are segmented."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (8, 3000, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / "c.png")
    out = tmp_path / "out"
    argv = ["--config-file", VOC20_TOY_CONFIG, "--input", str(folder), "--output", str(out)]
    argv += ["--no-progress", *tiny_opts]
    argv += ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]  # 3000x8 -> 128x0
    handler = ListHandler()
    logging.getLogger("clipdistill").addHandler(handler)
    try:
        rc = demo.main(argv)
    finally:
        logging.getLogger("clipdistill").removeHandler(handler)
    files = set(os.listdir(out))
    assert {"a_overlay.png", "c_overlay.png"} <= files, files
    assert not [f for f in files if f.startswith("b_")]
    skipped = [m for m in handler.messages if "b.png" in m and "Skipping" in m]
    assert len(skipped) == 1 and "\n" not in skipped[0], handler.messages
    assert rc == 0  # some inputs were segmented (the skipped one is listed at the end)
