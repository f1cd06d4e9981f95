"""OVSeg: the official checkpoint layout, the conversion hook, mask prompt tuning, the masked
crops, the inference rules (each against hand-computed values), training and evaluation of a tiny
model."""

import math
import os

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from timm.models.swin_transformer import SwinTransformerBlock, get_relative_position_index

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from clipdistill.data.datasets.register_voc import register_voc
from clipdistill.data.voc20_toy import generate_toy_voc
from clipdistill.engine import SegmenterCheckpointer, Trainer
from clipdistill.engine.checkpoint import CheckpointMismatchError
from clipdistill.modeling.clip import loader
from clipdistill.modeling.ovseg import (
    clip_class_probs,
    crop_regions,
    demo_scores,
    ensemble_probs,
    mask_class_probs,
    mask_prompt_encode,
    patch_keep_mask,
    semantic_scores,
)
from clipdistill.modeling.ovseg.swin import shifted_window_mask
from clipdistill.config import get_clipdistill_cfg
from clipdistill.engine import build_segmenter_teacher
from common import CONFIGS, random_inputs, tiny_cfg

DATA = os.path.join(os.path.dirname(__file__), "data")
TOY_CFG = os.path.join(CONFIGS, "ovseg", "ovseg_toy_voc20toy_60.yaml")


def toy_cfg(*opts):
    return get_clipdistill_cfg(TOY_CFG, list(opts))


@pytest.fixture(scope="module")
def toy_model():
    return build_model(toy_cfg()).eval()


# ------------------------------------------------------------------------------ checkpoints
def _official_keys(name):
    keys = {}
    with open(os.path.join(DATA, name)) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, rest = line.split(" ", 1)
            shape, _dtype = rest.rsplit(" ", 1)
            keys[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return keys


def _official_like_state(keys):
    """A stand-in for an official checkpoint: meta tensors of the recorded shapes, and the real
    values of the constants the conversion hook checks."""
    sd = {}
    for key, shape in keys.items():
        if key.endswith("relative_position_index"):
            win = math.isqrt(shape[0])
            sd[key] = get_relative_position_index(win, win)
        elif key == "clip_adapter.pixel_mean":
            sd[key] = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
        elif key == "clip_adapter.pixel_std":
            sd[key] = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255
        else:
            sd[key] = torch.empty(shape, device="meta")
    return sd


@pytest.mark.parametrize(
    "config,keys,num_keys,num_params",
    [
        (
            "ovseg_swinb_vitl14_coco_stuff_120k.yaml",
            "ovseg_swinb_vitl14_official_keys.txt",
            954,
            531_244_665,
        ),
        (
            "ovseg_r101c_vitb16_coco_stuff_120k.yaml",
            "ovseg_r101c_vitb16_official_keys.txt",
            983,
            211_140_033,
        ),
    ],
)
def test_full_size_models_have_the_official_state_dict(
    monkeypatch, config, keys, num_keys, num_params
):
    """The published architectures, built on the meta device (no memory, no init cost): after
    the conversion hook, the official key list (recorded from facebookresearch/ov-seg) gives
    exactly our keys and shapes."""

    def meta_clip(name, pretrained, quick_gelu):
        return open_clip.create_model(name, force_quick_gelu=quick_gelu, device="meta")

    monkeypatch.setattr(loader, "_create_open_clip_model", meta_clip)
    cfg = get_clipdistill_cfg(
        os.path.join(CONFIGS, "ovseg", config),
        ["MODEL.DEVICE", "cpu", "MODEL.OVSEG.CLIP.WEIGHTS", ""],
    )
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    official = _official_keys(keys)
    assert len(official) == num_keys
    assert sum(p.numel() for p in model.parameters()) == num_params
    converted = type(model).convert_checkpoint(_official_like_state(official))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours


def _to_official_layout(state):
    """Our state dict written the way the official code stores it (inverse of the hook), with the
    pre-version-2 head layout (pixel-decoder keys directly under sem_seg_head.)."""
    out = {}
    for k, v in state.items():
        if k == "clip_adapter.mask_embedding":
            k = "clip_adapter.clip_model.visual.mask_embedding"
        k = k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")
        out[k] = v.clone()
    for name, blk in _swin_attention_modules(state):
        out[f"{name}.relative_position_index"] = get_relative_position_index(blk, blk)
    out["clip_adapter.pixel_mean"] = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
    out["clip_adapter.pixel_std"] = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255
    return out


def _swin_attention_modules(state):
    for k, v in state.items():
        if k.endswith(".relative_position_bias_table"):
            win = (math.isqrt(v.shape[0]) + 1) // 2
            yield k[: -len(".relative_position_bias_table")], win


def test_official_checkpoint_loads_strictly_through_the_hook(tmp_path):
    torch.manual_seed(3)
    src = build_model(toy_cfg())
    torch.manual_seed(4)
    dst = build_model(toy_cfg())
    official = _to_official_layout(src.state_dict())
    assert "sem_seg_head.adapter_1.weight" in official  # legacy head layout
    path = str(tmp_path / "official.pth")
    torch.save({"model": official}, path)
    SegmenterCheckpointer(dst).load(path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # a clipdistill checkpoint passes the hook unchanged
    assert type(dst).convert_checkpoint(dict(dst.state_dict())).keys() == dst.state_dict().keys()

    bad = dict(official)
    key = next(k for k in bad if k.endswith("relative_position_index"))
    bad[key] = bad[key].flip(0)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        type(dst).convert_checkpoint(bad)
    del official["clip_adapter.non_object_embedding"]
    torch.save({"model": official}, path)
    with pytest.raises(CheckpointMismatchError, match="non_object_embedding"):
        SegmenterCheckpointer(dst).load(path)


# ------------------------------------------------------------------------------ mask prompt
def test_patch_keep_mask_hand_case():
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 0, 0] = 1  # one pixel of patch (0, 0)
    mask[0, 0, 16:32, 48:64] = 1  # all of patch (1, 3)
    mask[0, 0, 40, 20] = 1  # one pixel of patch (2, 1)
    keep = patch_keep_mask(mask, 16)
    expected = torch.zeros(16)
    expected[[0, 1 * 4 + 3, 2 * 4 + 1]] = 1
    assert keep.shape == (1, 16, 1)
    assert torch.equal(keep[0, :, 0], expected)


def _hand_mask_prompt(visual, images, keep, emb):
    """Mask prompt tuning written out token by token: outside tokens are *assigned* the mask
    embedding (before the class token and the positional embedding; after blocks 0..depth-2)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2).clone()
    outside = ~keep
    x[:, outside] = emb[0][outside]
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    for i, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        if i + 1 < emb.shape[0]:
            patches = x[:, 1:].clone()
            patches[:, outside] = emb[i + 1][outside]
            x = torch.cat([x[:, :1], patches], dim=1)
    return visual.ln_post(x[:, 0]) @ visual.proj


def test_mask_prompt_replaces_outside_tokens_at_each_depth():
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-T-16-toy", force_quick_gelu=True).visual.eval()
    grid = visual.grid_size[0] * visual.grid_size[1]
    emb = torch.randn(2, grid, visual.conv1.out_channels)
    images = torch.randn(2, 3, 224, 224)
    masks = torch.zeros(2, 1, 224, 224)
    masks[0, :, 20:100, 30:60] = 1
    masks[1, :, 200:, :5] = 1
    keep_flat = patch_keep_mask(masks, 16)[..., 0].bool()
    with torch.no_grad():
        got = mask_prompt_encode(visual, images, masks, emb)
        for b in range(2):
            want = _hand_mask_prompt(visual, images[b : b + 1], keep_flat[b], emb)
            torch.testing.assert_close(got[b : b + 1], want, rtol=1e-5, atol=1e-5)
        # pixels of fully replaced patches do not matter; the deeper embedding does
        changed = images.clone()
        changed[0, :, 150:, 150:] += 5
        torch.testing.assert_close(mask_prompt_encode(visual, changed, masks, emb), got)
        emb2 = emb.clone()
        emb2[1] += torch.randn_like(emb2[1])
        assert not torch.allclose(mask_prompt_encode(visual, images, masks, emb2), got)
        # a single region works (the official forward squeezes it away and crashes)
        one = mask_prompt_encode(visual, images[:1], masks[:1], emb)
        torch.testing.assert_close(one, got[:1], rtol=1e-5, atol=1e-5)
        # without masks: CLIP's own forward
        torch.testing.assert_close(mask_prompt_encode(visual, images), visual(images))


def test_masked_crop_hand_case():
    image = torch.arange(3 * 10 * 12, dtype=torch.float32).view(3, 10, 12) % 251
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:6, 3:8] = True
    mask[2, 3] = False  # inside the box, outside the mask
    fill = [255.0 * c for c in OPENAI_DATASET_MEAN]
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255
    crops, crop_masks = crop_regions(image, mask[None], fill, mean, std, size=8)
    region = image[:, 2:6, 3:8].clone()
    region[:, 0, 0] = torch.tensor(fill)
    expected = F.interpolate(((region[None] - mean) / std), size=(8, 8), mode="bicubic")
    torch.testing.assert_close(crops, expected)
    box_mask = mask[2:6, 3:8].float()[None, None]
    torch.testing.assert_close(crop_masks, F.interpolate(box_mask, size=(8, 8), mode="nearest"))


# ------------------------------------------------------------------------------ inference rules
def test_class_probabilities_and_ensemble_hand_case():
    # p_mf: softmax over K+1, then the no-object column dropped
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))
    torch.testing.assert_close(mask_class_probs(logits), torch.tensor([[0.25, 0.5]]))
    # p_clip: the no-object column dropped before the softmax
    clip_logits = torch.log(torch.tensor([[1.0, 3.0, 100.0]]))
    torch.testing.assert_close(clip_class_probs(clip_logits), torch.tensor([[0.25, 0.75]]))
    # geometric ensemble; the query without a crop keeps p_mf^(1-w)
    p_mf = torch.tensor([[0.5, 0.2], [0.1, 0.6], [0.3, 0.3]])
    p_clip = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    valid = torch.tensor([True, False, True])
    expected = torch.tensor(
        [
            [math.sqrt(0.45), math.sqrt(0.02)],
            [math.sqrt(0.1), math.sqrt(0.6)],
            [math.sqrt(0.12), math.sqrt(0.18)],
        ]
    )
    torch.testing.assert_close(ensemble_probs(p_mf, p_clip, valid, 0.5), expected)
    w = 0.7
    torch.testing.assert_close(
        ensemble_probs(p_mf, p_clip, valid, w)[1], torch.tensor([0.1**0.3, 0.6**0.3])
    )
    # sem_seg = sum_q p[q, k] * mask[q]
    masks = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 0.2]]])
    scores = semantic_scores(p_mf, masks)
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.5 + 0.05, 0.05 + 0.06]))
    torch.testing.assert_close(scores[1, 0], torch.tensor([0.2 + 0.3, 0.3 + 0.06]))


def test_demo_rule_hand_case():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])
    masks = torch.tensor([[[0.9, 0.1]], [[0.9, 0.9]], [[0.2, 0.8]]])
    # class 0 picks query 0, class 1 picks query 2; each adds its whole row on its binary mask
    out = demo_scores(probs, masks, mask_thr=0.5, num_selectable=2)
    torch.testing.assert_close(out[:, 0], torch.tensor([[0.7, 0.1], [0.3, 0.9]]))
    # the padding class ("others") selects nothing
    out = demo_scores(probs, masks, mask_thr=0.5, num_selectable=1)
    torch.testing.assert_close(out[:, 0], torch.tensor([[0.7, 0.0], [0.3, 0.0]]))
    assert demo_scores(probs[:0], masks[:0], 0.5, 2).abs().sum() == 0


def test_semantic_inference_with_no_and_one_valid_proposal(toy_model):
    m = toy_model
    names = ["cat", "dog", "sky"]
    text = m.clip_adapter.text_features(names)
    logits = torch.randn(10, 4)
    image = torch.randint(0, 256, (3, 40, 50)).float()
    probs = torch.full((10, 40, 50), 0.1)  # below MASK_THR (0.5): no crop at all
    none_valid = m.semantic_inference(logits, probs, image, text, names)
    w = m.clip_ensemble_weight
    expected = semantic_scores(mask_class_probs(logits) ** (1 - w), probs)
    torch.testing.assert_close(none_valid, expected)
    probs[3, 5:20, 10:30] = 0.9  # exactly one valid proposal
    one_valid = m.semantic_inference(logits, probs, image, text, names)
    clip_logits, valid = m.clip_adapter.classify_regions(image, probs, text)
    assert valid.tolist() == [i == 3 for i in range(10)] and clip_logits.shape == (1, 4)
    p = mask_class_probs(logits) ** (1 - w)
    p[3] = mask_class_probs(logits)[3] ** (1 - w) * clip_class_probs(clip_logits)[0] ** w
    torch.testing.assert_close(one_valid, semantic_scores(p, probs))


def test_text_embeddings_follow_the_weights():
    """The official model caches text features per noun forever; here a changed text tower (a
    checkpoint loaded, a weight edited in place) is never served stale embeddings."""
    model = build_model(toy_cfg())
    adapter = model.clip_adapter
    before = adapter.class_text_features(["cat", "dog"])
    with torch.no_grad():
        adapter.clip_model.text_projection.mul_(-1)
    torch.testing.assert_close(adapter.class_text_features(["cat", "dog"]), -before)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["clip_adapter.clip_model.text_projection"] *= -1
    model.load_state_dict(state)
    torch.testing.assert_close(adapter.class_text_features(["cat", "dog"]), before)


def test_swin_shift_mask_matches_timm_on_window_multiples():
    block = SwinTransformerBlock(8, (12, 8), num_heads=1, window_size=4, shift_size=2)
    torch.testing.assert_close(shifted_window_mask(12, 8, 4, 2), block.attn_mask)


# ------------------------------------------------------------------------------ model
def test_inference_contract_and_demo(toy_model):
    m = toy_model
    inputs = [
        {"image": x["image"], "height": 50, "width": 70}
        for x in random_inputs([(96, 128), (80, 72)])
    ]
    m.set_vocabulary(["cat", "dog", "sky"])
    with torch.no_grad():
        out = m(inputs)
        assert [tuple(o["sem_seg"].shape) for o in out] == [(3, 50, 70), (3, 50, 70)]
        m.demo = True
        m.set_vocabulary(["cat"])  # contrasted with "others", a second output class
        assert m.vocabulary_for({}) == ["cat", "others"]
        assert m(inputs[:1])[0]["sem_seg"].shape == (2, 50, 70)
    m.demo = False
    m.set_vocabulary(None)


def test_ovseg_as_a_students_teacher():
    cfg = tiny_cfg("MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE", TOY_CFG)
    teacher = build_segmenter_teacher(cfg)
    images = torch.stack([x["image"] for x in random_inputs([(64, 96)] * 2)])
    probs = teacher.probs(images, ["road", "tree"])
    assert probs.shape == (2, 2, 64, 96)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 96))
    # the probabilities are OVSeg's normalised scores
    seg = teacher.segmenter
    seg.set_vocabulary(["road", "tree"])
    with torch.no_grad():
        scores = seg([{"image": images[0], "height": 64, "width": 96}])[0]["sem_seg"]
    torch.testing.assert_close(probs[0], scores / scores.sum(0, keepdim=True), rtol=1e-4, atol=1e-6)


def test_tiny_ovseg_trains_clip_frozen():
    torch.manual_seed(0)
    model = build_model(toy_cfg()).train()
    inputs = random_inputs([(96, 96), (96, 96)], num_classes=4, seed=1)
    for x in inputs:  # blocky labels: a few large segments
        x["sem_seg"] = x["sem_seg"][::32, ::32].repeat_interleave(32, 0).repeat_interleave(32, 1)
    clip_before = {k: v.clone() for k, v in model.clip_adapter.clip_model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.clip_adapter.clip_model.parameters())
    assert not model.clip_adapter.mask_embedding.requires_grad
    opt = torch.optim.AdamW(params, lr=1e-3)
    totals = []
    for _ in range(8):
        losses = model(inputs)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_0"} <= set(losses)
    assert totals[-1] < 0.8 * totals[0], totals
    assert model.clip_adapter.non_object_embedding.grad is not None
    for k, v in model.clip_adapter.clip_model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k


@pytest.fixture
def toy_voc(tmp_path):
    root = str(tmp_path / "VOC2012")
    generate_toy_voc(root, num_train=2, num_val=3, size=64, seed=2)
    register_voc("tmpovseg", root, "")
    yield "tmpovseg_sem_seg_val", root
    for split in ("train", "val"):
        DatasetCatalog.remove(f"tmpovseg_sem_seg_{split}")
        MetadataCatalog.remove(f"tmpovseg_sem_seg_{split}")


def test_eval_only_on_toy_set_matches_an_independent_miou(toy_voc, tmp_path, toy_model):
    name, _ = toy_voc
    cfg = toy_cfg(
        "DATASETS.TEST",
        f"('{name}',)",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    )
    results = Trainer.test(cfg, toy_model)
    miou = results["sem_seg"]["mIoU"]
    # independent: run the model on each image, confusion matrix over labelled pixels
    from detectron2.data import detection_utils as utils
    from PIL import Image

    conf = np.zeros((20, 20), np.int64)
    for d in DatasetCatalog.get(name):
        img = torch.as_tensor(utils.read_image(d["file_name"], "RGB").transpose(2, 0, 1).copy())
        with torch.no_grad():
            sem = toy_model([{"image": img, "dataset_name": name}])[0]["sem_seg"]
        pred = sem.argmax(0).numpy()
        gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        ok = gt != 255
        np.add.at(conf, (gt[ok], pred[ok]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    assert miou == pytest.approx(100 * np.mean(tp[present] / union[present]), abs=1e-6)
