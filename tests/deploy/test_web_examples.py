"""The web demo's example images: the config's first test images that exist, offered in the app
(the testbed's demo opens with val images to click)."""

import json

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog

from common import tiny_cfg, write_image


def _register(name, paths):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [{"file_name": p, "sem_seg_file_name": p} for p in paths])
    MetadataCatalog.get(name).set(stuff_classes=["background", "cat"])


def test_example_images_are_the_first_existing_test_images(tmp_path):
    from clipdistill.deploy.predictor import example_images

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = str(tmp_path / f"val_{i}.png")
        if i != 1:  # one record whose file is missing: skipped
            write_image(p, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        paths.append(p)
    _register("web_examples_val", paths)
    cfg = tiny_cfg()
    cfg.defrost()
    cfg.DATASETS.TEST = ("web_examples_val",)
    assert example_images(cfg, 3) == [paths[0], paths[2], paths[3]]
    assert example_images(cfg, 0) == []
    cfg.DATASETS.TEST = ("no_such_dataset_registered",)
    assert example_images(cfg, 3) == []


def test_app_offers_the_examples(tmp_path, tiny_opts):
    from clipdistill.config import get_clipdistill_cfg
    from clipdistill.deploy import SegPredictor
    from clipdistill.deploy.web import build_app

    from deploy_helpers import VOC20_TOY_CONFIG

    rng = np.random.default_rng(1)
    examples = []
    for i in range(2):
        p = str(tmp_path / f"ex_{i}.png")
        write_image(p, rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
        examples.append(p)
    cfg = get_clipdistill_cfg(VOC20_TOY_CONFIG, list(tiny_opts))
    predictor = SegPredictor(cfg, class_names=["cat", "dog"])
    app = build_app(predictor, examples=examples)
    config = json.dumps(app.get_config_file())
    assert '"examples"' in config  # the elem_id of the Examples block
    for p in examples:
        assert p.split("/")[-1] in config
    without = json.dumps(build_app(predictor).get_config_file())
    assert '"examples"' not in without


def test_small_images_are_shown_enlarged_without_a_legend_over_them():
    from clipdistill.deploy.web import DISPLAY_MIN_SIDE, display_overlay
    from clipdistill.utils.visualize import class_colors

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    label = np.zeros((64, 80), np.int64)
    label[10:30, 20:50] = 1
    colors = class_colors(2)
    out = display_overlay(image, label, colors)
    factor = -(-DISPLAY_MIN_SIDE // 64)
    assert out.shape == (64 * factor, 80 * factor, 3)
    # each source pixel is one block, and the top-left corner (where a drawn legend would be)
    # is the plain blend of the image with the background colour
    block = out[:factor, :factor].reshape(-1, 3)
    assert (block == block[0]).all()
    expected = np.clip(0.5 * image[0, 0] + 0.5 * colors[0] + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], expected)
    big = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)
    assert display_overlay(big, np.zeros((400, 500), np.int64), colors).shape == big.shape
