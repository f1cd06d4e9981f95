"""SemSegDatasetMapper: 8/16-bit labels, consistent geometry, and clear errors on bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T

from clipdistill.data import SemSegDatasetMapper


def _mapper(augs=(), num_classes=20, ignore=255, model_ignore=255, is_train=True):
    return SemSegDatasetMapper(
        is_train,
        augmentations=list(augs),
        image_format="RGB",
        num_classes=num_classes,
        ignore_label=ignore,
        model_ignore_value=model_ignore,
    )


def _pair(tmp_path, label, image_hw=None, name="a"):
    h, w = image_hw or label.shape
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None] % 256  # column index in the red channel
    Image.fromarray(img).save(tmp_path / f"{name}.png")
    lab_path = tmp_path / f"{name}_label{'.tif' if label.dtype == np.uint16 else '.png'}"
    Image.fromarray(label).save(lab_path)
    return {
        "file_name": str(tmp_path / f"{name}.png"),
        "sem_seg_file_name": str(lab_path),
        "height": h,
        "width": w,
    }


def test_reads_8bit_and_maps_ignore(tmp_path):
    label = np.full((6, 8), 3, np.uint8)
    label[0] = 255
    out = _mapper(model_ignore=-1)(_pair(tmp_path, label))
    assert out["image"].shape == (3, 6, 8) and out["image"].dtype == torch.uint8
    assert out["sem_seg"].dtype == torch.int64
    assert out["sem_seg"][0].eq(-1).all() and out["sem_seg"][1:].eq(3).all()


def test_reads_16bit_unchanged_through_resize(tmp_path):
    label = np.full((10, 12), 400, np.uint16)
    label[:, :6] = 458
    label[0] = 65535
    aug = [T.ResizeShortestEdge(20, 100)]
    out = _mapper(aug, num_classes=459, ignore=65535, model_ignore=65535)(_pair(tmp_path, label))
    assert out["sem_seg"].shape == (20, 24)
    assert set(out["sem_seg"].unique().tolist()) == {400, 458, 65535}


def test_flip_and_crop_move_image_and_label_together(tmp_path):
    h, w = 8, 16
    label = (np.arange(w)[None].repeat(h, 0) % 20).astype(np.uint8)  # label = column % 20
    d = _pair(tmp_path, label)
    mapper = _mapper([T.RandomCrop("absolute", (8, 12)), T.RandomFlip(prob=1.0)])
    for _ in range(3):
        out = mapper(d)
        cols = out["image"][0].long()  # red channel = original column
        assert out["sem_seg"].shape == (8, 12)
        assert torch.equal(out["sem_seg"], cols % 20)


def test_size_mismatch_names_both_files(tmp_path):
    d = _pair(tmp_path, np.zeros((6, 8), np.uint8), image_hw=(6, 9))
    with pytest.raises(ValueError, match=r"a\.png.*9x6.*a_label\.png.*8x6"):
        _mapper()(d)


def test_label_out_of_range_names_file_and_values(tmp_path):
    label = np.zeros((4, 4), np.uint8)
    label[0, 0] = 21
    label[0, 1] = 254
    with pytest.raises(ValueError, match=r"a_label\.png.*\[21, 254\]"):
        _mapper()(_pair(tmp_path, label))


def test_unreadable_image_and_label(tmp_path):
    d = _pair(tmp_path, np.zeros((4, 4), np.uint8))
    (tmp_path / "a.png").write_bytes(b"not an image")
    with pytest.raises(OSError, match=r"Cannot read image .*a\.png"):
        _mapper()(d)
    d = _pair(tmp_path, np.zeros((4, 4), np.uint8), name="b")
    with open(d["sem_seg_file_name"], "r+b") as f:
        f.truncate(20)
    with pytest.raises(OSError, match=r"Cannot read label map .*b_label\.png"):
        _mapper()(d)


def test_ignore_value_colliding_with_a_class_is_rejected():
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.IGNORE_VALUE=255"):
        _mapper(num_classes=459, ignore=65535, model_ignore=255)


def test_test_mode_checks_labels_but_does_not_return_them(tmp_path):
    label = np.full((4, 4), 458, np.uint16)
    d = _pair(tmp_path, label)
    # 459 classes with the default model ignore 255: only a training problem
    out = _mapper(num_classes=459, ignore=65535, model_ignore=255, is_train=False)(d)
    assert "sem_seg" not in out and out["image"].shape == (3, 4, 4)
    label[0, 0] = 500
    with pytest.raises(ValueError, match=r"\[500\]"):
        _mapper(num_classes=459, ignore=65535, model_ignore=255, is_train=False)(
            _pair(tmp_path, label, name="c")
        )
