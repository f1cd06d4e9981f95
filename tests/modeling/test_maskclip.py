"""The training-free ``MaskCLIP`` META_ARCH (clipdistill/modeling/maskclip/meta_arch.py):
its inference protocol against transcriptions of SCLIP's / ClearCLIP's ``forward_slide`` and
``postprocess_result``, and a run through ``Trainer.test`` whose mIoU equals an independent
computation from the written predictions."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from clipdistill.data.datasets.register_voc import register_voc
from clipdistill.data.voc20_toy import generate_toy_voc
from clipdistill.engine import Trainer
from clipdistill.config import get_clipdistill_cfg
from clipdistill.modeling.clip import TOY_MODEL_NAME
from clipdistill.modeling.clip.dense import dense_features
from clipdistill.modeling.maskclip import MaskCLIP
from clipdistill.modeling.segmenter import OpenVocabSegmenter
from clipdistill.modeling.teacher import CLIPTeacher
from common import CONFIGS

NAMES = ["c0", "c1", "c2", "c3", "c4"]


@pytest.fixture(scope="module")
def teachers():
    return {
        m: CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", templates="single", dense_method=m)
        for m in ("sclip", "clearclip")
    }


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


# ------------------------------------------------------------- transcriptions of official code
def _official_forward_feature(teacher, img, text):
    """SCLIP ``forward_feature``: patch features normalised, scored, upsampled to the crop."""
    feats = dense_features(teacher.model.visual, img, teacher.dense_method)  # tested elsewhere
    b, c, h, w = feats.shape
    image_features = feats.flatten(2).transpose(1, 2)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    logits = image_features @ text.T
    logits = logits.permute(0, 2, 1).reshape(-1, text.shape[0], h, w)
    return F.interpolate(logits, size=img.shape[-2:], mode="bilinear")


def _compute_padsize(H, W, patch_size):
    """ClearCLIP ``compute_padsize``."""
    l, r, t, b = 0, 0, 0, 0
    if W % patch_size:
        lr = patch_size - (W % patch_size)
        l = lr // 2
        r = lr - l
    if H % patch_size:
        tb = patch_size - (H % patch_size)
        t = tb // 2
        b = tb - t
    return l, r, t, b


def _official_forward_slide(teacher, img, text, stride, crop_size, ori_shape, pad):
    """SCLIP ``forward_slide`` (with ClearCLIP's window padding when ``pad``)."""
    h_stride, w_stride = stride, stride
    h_crop, w_crop = crop_size, crop_size
    batch_size, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, text.shape[0], h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            H, W = crop_img.shape[2:]
            p = _compute_padsize(H, W, teacher.patch_size) if pad else (0, 0, 0, 0)
            if any(p):
                crop_img = F.pad(crop_img, p)
            crop_seg_logit = _official_forward_feature(teacher, crop_img, text)
            if any(p):
                l, t = p[0], p[2]
                crop_seg_logit = crop_seg_logit[:, :, t : t + H, l : l + W]
            preds += F.pad(
                crop_seg_logit,
                (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)),
            )
            count_mat[:, :, y1:y2, x1:x2] += 1
    preds = preds / count_mat
    return F.interpolate(preds, size=ori_shape, mode="bilinear")


def _official_postprocess(seg_logits, logit_scale, prob_thd, area_thd):
    """SCLIP ``postprocess_result`` for one image (one query per class)."""
    seg_logits = seg_logits * logit_scale
    seg_logits = seg_logits.softmax(0)
    num_cls = seg_logits.shape[0]
    if area_thd is not None:
        predictions = F.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
        area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)
        area_pred = (area_pred > area_thd * area_pred.sum()).to(seg_logits.dtype)
        seg_logits[1:] *= area_pred.transpose(0, -1)
    seg_pred = seg_logits.argmax(0, keepdim=True)
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
    return seg_logits, seg_pred[0]


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(
    "method, window, stride, pad, size",
    [
        ("sclip", 64, 32, False, (96, 140)),  # exact windows
        ("sclip", 0, 0, False, (90, 100)),  # whole image, sides floored by the patch conv
        ("clearclip", 40, 24, True, (72, 100)),  # windows padded to the patch size
        ("clearclip", 64, 32, True, (50, 130)),  # image shorter than the window
    ],
)
def test_protocol_matches_official_code(teachers, method, window, stride, pad, size):
    teacher = teachers[method]
    model = MaskCLIP(
        clip=teacher,
        train_vocabulary=NAMES,
        window=window,
        stride=stride,
        logit_scale=40.0,
        pad_windows=pad,
    ).eval()
    x = _image(*size)
    ori = (size[0] * 2 + 1, size[1] * 2 - 3)
    out = model([{"image": x, "height": ori[0], "width": ori[1]}])[0]["sem_seg"]
    text = teacher.encode_text(NAMES)
    img = ((x.float()[None] - teacher.pixel_mean) / teacher.pixel_std).float()
    crop = window if window > 0 else max(size)  # one window covering the image
    ref = _official_forward_slide(teacher, img, text, max(stride, 1), crop, ori, pad)
    probs, _ = _official_postprocess(ref[0], 40.0, 0.0, None)
    assert out.shape == (len(NAMES), *ori)
    torch.testing.assert_close(out, probs, atol=1e-5, rtol=1e-5)


def test_background_rules_match_sclip_postprocess():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 30, 40, generator=g) * 0.005
    logits[1, :, :20] += 0.1  # class 1 left, class 2 right
    logits[2, :, 20:] += 0.1
    logits[1:3, 10:15, 10:15] -= 0.1  # a flat patch: every probability low -> background
    logits[3, :2, :2] += 0.2  # class 3: a tiny area, dropped by the area rule
    model = MaskCLIP.__new__(MaskCLIP)  # only the post-processing is exercised
    model.logit_scale, model.prob_threshold, model.area_threshold = 65.0, 0.3, 0.1
    probs = model._postprocess(logits.clone())
    ref_probs, ref_pred = _official_postprocess(logits.clone(), 65.0, 0.3, 0.1)
    assert torch.equal(probs.argmax(0), ref_pred)
    assert (ref_pred == 0).any() and (ref_pred != 0).any()
    assert (ref_probs[3] == 0).all()
    kept = ref_probs.max(0).values >= 0.3
    torch.testing.assert_close(probs[:, kept], ref_probs[:, kept])


def test_interface_and_bad_settings(teachers):
    model = MaskCLIP(clip=teachers["sclip"], train_vocabulary=NAMES)
    assert isinstance(model, OpenVocabSegmenter) and not model.exportable
    assert model.state_dict() == {}  # nothing to load: its CLIP comes from MODEL.MASKCLIP.CLIP
    per_image = [
        n
        for n, _ in model.named_parameters()
        if not any(n == s or n.startswith(s + ".") for s in model.inference_excluded_modules)
    ]
    assert per_image and all(n.startswith("clip.model.visual.") for n in per_image)
    model.train()
    with pytest.raises(RuntimeError, match="training-free"):
        model([{"image": _image(32, 32)}])
    with pytest.raises(ValueError, match="PROB_THRESHOLD"):
        MaskCLIP(clip=teachers["sclip"], train_vocabulary=NAMES, prob_threshold=1.5)
    with pytest.raises(ValueError, match="SLIDE_STRIDE"):
        MaskCLIP(clip=teachers["sclip"], train_vocabulary=NAMES, window=64, stride=0)


# ------------------------------------------------------------------ through Trainer.test
@pytest.fixture(scope="module")
def toy_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskclip_toy")
    voc = str(root / "VOC2012")
    generate_toy_voc(voc, num_train=1, num_val=4, size=96, seed=5)
    register_voc("tmpmaskclip", voc, "")
    yield voc, "tmpmaskclip_sem_seg_val"
    for split in ("train", "val"):
        DatasetCatalog.remove(f"tmpmaskclip_sem_seg_{split}")
        MetadataCatalog.remove(f"tmpmaskclip_sem_seg_{split}")


def _independent_miou(pred_json, gt_dir, num_classes, ignore=255):
    conf = np.zeros((num_classes, num_classes), np.int64)  # [gt, pred]
    preds = {}
    for rec in json.load(open(pred_json)):
        m = mask_util.decode(rec["segmentation"]).astype(bool)
        p = preds.setdefault(rec["file_name"], np.full(m.shape, -1, np.int64))
        p[m] = rec["category_id"]
    for file_name, pred in preds.items():
        stem = os.path.splitext(os.path.basename(file_name))[0]
        gt = np.asarray(Image.open(os.path.join(gt_dir, stem + ".png"))).astype(np.int64)
        valid = gt != ignore
        assert (pred[valid] >= 0).all()
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    tp = np.diag(conf).astype(np.float64)
    gt_count = conf.sum(1)
    union = gt_count + conf.sum(0) - tp
    present = gt_count > 0
    return 100 * np.mean(tp[present] / union[present]), len(preds)


def test_trainer_test_miou_equals_independent_computation(toy_val, tmp_path):
    voc, name = toy_val
    cfg = get_clipdistill_cfg(
        os.path.join(CONFIGS, "maskclip", "sclip_toyclip_voc20toy.yaml"),
        [
            "DATASETS.TEST",
            f"('{name}',)",
            "INPUT.MIN_SIZE_TEST",
            "80",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "DATALOADER.NUM_WORKERS",
            "0",
        ],
    )
    model = build_model(cfg).eval()
    assert isinstance(model, MaskCLIP) and model.dense_method == "sclip"
    results = Trainer.test(cfg, model)
    out = tmp_path / "out" / "inference"
    miou, n = _independent_miou(
        str(out / "sem_seg_predictions.json"),
        os.path.join(voc, "annotations_detectron2", "val"),
        num_classes=20,
    )
    assert n == 4
    assert results["sem_seg"]["mIoU"] == pytest.approx(miou, abs=1e-6)
    summary = json.loads((out / "results.json").read_text())["results"]
    assert summary[0]["dataset"] == name and summary[0]["mIoU"] == pytest.approx(miou, abs=1e-6)
