"""SegStudent end to end on random weights: shapes, gradients, frozen teacher, checkpoints."""

import copy

import pytest
import torch

from clipdistill.engine import build_model
from detectron2.utils.events import EventStorage

from clipdistill.engine import SegmenterCheckpointer, Trainer
from clipdistill.engine.checkpoint import CheckpointMismatchError
from common import VOC20_TOY_CONFIG, random_inputs, tiny_cfg

SIZES = [(64, 80), (64, 79)]  # odd width: padding and cropping back must work


@pytest.fixture(scope="module")
def cfg():
    return tiny_cfg("MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT", "0.5")


def test_train_step_losses_and_grads(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(random_inputs(SIZES))
    assert set(losses) == {"loss_ce", "loss_global", "loss_local", "loss_dense"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"trainable parameters without gradient: {no_grad}"
    assert all(p.grad is None for p in model.teacher.parameters())


def test_loss_weights_scale_and_disable(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    inputs = random_inputs(SIZES)
    with EventStorage():
        base = model(inputs)
    c2 = cfg.clone()
    c2.defrost()
    c2.MODEL.CLIPDISTILL.LOSS.CE_WEIGHT = 2.0
    c2.MODEL.CLIPDISTILL.LOSS.GLOBAL_WEIGHT = 0.0
    model2 = build_model(c2)
    model2.load_state_dict(model.state_dict())
    with EventStorage():
        out = model2(inputs)
    assert "loss_global" not in out
    assert out["loss_ce"].item() == pytest.approx(2 * base["loss_ce"].item(), rel=1e-5)


def test_inference_contract(cfg):
    model = build_model(cfg).eval()
    inputs = random_inputs(SIZES)
    inputs[1]["height"], inputs[1]["width"] = 128, 158  # original size differs from input
    with torch.no_grad():
        out = model(inputs)
    assert out[0]["sem_seg"].shape == (20, 64, 80)
    assert out[1]["sem_seg"].shape == (20, 128, 158)
    # another vocabulary at inference: the classifier is text
    model.set_vocabulary(["cat", "potted plant", "sky"])
    with torch.no_grad():
        out = model(inputs[:1])
    assert out[0]["sem_seg"].shape == (3, 64, 80)


def test_bad_vocabularies(cfg):
    model = build_model(cfg)
    with pytest.raises(ValueError):
        model.set_vocabulary([])
    with pytest.raises(ValueError, match="cat"):
        model.set_vocabulary(["cat", "dog", "cat"])


def test_closed_set_head(cfg):
    c = cfg.clone()
    c.defrost()
    c.MODEL.SEM_SEG_HEAD.NAME = "ClosedSetHead"
    c.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 20
    model = build_model(c)
    with EventStorage():
        losses = model(random_inputs(SIZES))
    assert torch.isfinite(sum(losses.values()))
    model.eval()
    with torch.no_grad():
        assert model(random_inputs(SIZES))[0]["sem_seg"].shape == (20, 64, 80)


def test_teacher_frozen_unchanged_and_not_in_optimizer_or_checkpoint(cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(cfg)
    before = copy.deepcopy(model.teacher.model.state_dict())
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = Trainer.build_optimizer(cfg, model)
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in model.teacher.parameters())
    model.train()
    for _ in range(2):
        with EventStorage():
            loss = sum(model(random_inputs(SIZES)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not model.teacher.training and not any(m.training for m in model.teacher.modules())
    for k, v in model.teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher weight {k} changed"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, student_before[k])]
    assert changed, "the student did not learn"
    SegmenterCheckpointer(model, str(tmp_path)).save("ckpt")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=False)["model"]
    assert saved and not any(k.startswith("teacher.") for k in saved)
    # strict reload into a fresh model reproduces the student exactly
    fresh = build_model(cfg)
    SegmenterCheckpointer(fresh).load(str(tmp_path / "ckpt.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])


def test_checkpoint_mismatch_is_an_error(cfg, tmp_path):
    model = build_model(cfg)
    SegmenterCheckpointer(model, str(tmp_path)).save("ckpt")
    other = cfg.clone()
    other.defrost()
    other.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32  # different widths
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        SegmenterCheckpointer(build_model(other)).load(str(tmp_path / "ckpt.pth"))
    sd = torch.load(tmp_path / "ckpt.pth", weights_only=False)
    sd["model"].pop(next(iter(sd["model"])))
    sd["model"]["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="missing keys.*unexpected keys.*extra"):
        SegmenterCheckpointer(build_model(cfg)).load(str(tmp_path / "partial.pth"))


def test_missing_weights_file(cfg, tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        SegmenterCheckpointer(build_model(cfg)).resume_or_load(missing, resume=False)


def test_unreachable_backbone_weights():
    with pytest.raises(RuntimeError, match="MODEL.TIMM.WEIGHTS"):
        build_model(tiny_cfg("MODEL.TIMM.WEIGHTS", "timm", "MODEL.TIMM.NAME", "efficientnet_b0"))
    with pytest.raises(FileNotFoundError, match="MODEL.TIMM.WEIGHTS"):
        build_model(tiny_cfg("MODEL.TIMM.WEIGHTS", "/nonexistent/effnet.pth"))


def test_backbone_features_are_named_by_stride():
    """res2..res5 are strides 4..32 whichever timm levels hold them: levels 1..4 of a CNN with a
    stride-2 level, levels 0..3 of one whose first level is at stride 4 (ConvNeXt, RepViT)."""
    from clipdistill.modeling.backbone.timm_backbone import levels_at_strides
    from clipdistill.utils.errors import ConfigError

    assert levels_at_strides("test_efficientnet") == [1, 2, 3, 4]
    assert levels_at_strides("test_convnext") == [0, 1, 2, 3]
    model = build_model(
        tiny_cfg("MODEL.TIMM.NAME", "test_convnext", "MODEL.TIMM.OUT_INDICES", "[0, 1, 2, 3]")
    ).eval()
    shapes = model.backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "res2": 4,
        "res3": 8,
        "res4": 16,
        "res5": 32,
    }
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape[-2:] == (64, 64)
    with pytest.raises(ConfigError, match=r"MODEL.TIMM.OUT_INDICES=\[1, 2, 3, 4\].*\[0, 1, 2, 3\]"):
        build_model(tiny_cfg("MODEL.TIMM.NAME", "test_convnext"))
    with pytest.raises(ConfigError, match="not a timm model"):
        levels_at_strides("no_such_model")


def test_backbone_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("test_efficientnet", pretrained=False)
    with torch.no_grad():
        for p in src.parameters():
            p.fill_(0.5)
    path = str(tmp_path / "w.safetensors")
    save_file(src.state_dict(), path)
    model = build_model(tiny_cfg("MODEL.TIMM.WEIGHTS", path))
    stem = model.backbone.model.conv_stem.weight
    assert torch.all(stem == 0.5)


def test_segmenter_teacher_distillation(cfg, tmp_path):
    """Another segmenter (here a tiny SegStudent from its own config and checkpoint) teaches the
    student: loss_seg_kd is computed, the teacher is frozen, not optimised, not checkpointed."""
    from common import TINY_OPTS

    teacher_cfg = tiny_cfg()
    SegmenterCheckpointer(build_model(teacher_cfg), str(tmp_path)).save("teacher")
    c = cfg.clone()
    c.defrost()
    c.MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT = 0.5
    c.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE = VOC20_TOY_CONFIG
    c.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.OPTS = list(TINY_OPTS)
    c.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.WEIGHTS = str(tmp_path / "teacher.pth")
    model = build_model(c).train()
    assert not model.seg_teacher.training and not model.seg_teacher.segmenter.training
    inputs = random_inputs(SIZES)
    with EventStorage():
        losses = model(inputs)
    assert torch.isfinite(losses["loss_seg_kd"]) and losses["loss_seg_kd"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.seg_teacher.parameters())
    assert not any(k.startswith("seg_teacher.") for k in model.state_dict())
    opt = Trainer.build_optimizer(c, model)
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in model.seg_teacher.parameters())
    # the target is the teacher's own prediction, as dense_class_probs gives it
    images = inputs[0]["image"][None].float()
    probs = model.seg_teacher.probs(images, model.train_vocabulary)
    assert probs.shape == (1, len(model.train_vocabulary), *images.shape[-2:])
    torch.testing.assert_close(probs.sum(1), torch.ones(1, *images.shape[-2:]))
    # a student checkpoint loads into a student without a segmenter teacher and back (strict)
    SegmenterCheckpointer(model, str(tmp_path)).save("student")
    SegmenterCheckpointer(build_model(cfg)).load(str(tmp_path / "student.pth"))


def test_segmenter_teacher_needs_its_weight(cfg):
    c = cfg.clone()
    c.defrost()
    c.MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT = 1.0
    with pytest.raises(ValueError, match="SEGMENTER_TEACHER.CONFIG_FILE"):
        build_model(c)
    c.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE = "/nonexistent.yaml"
    with pytest.raises(FileNotFoundError, match="/nonexistent.yaml"):
        build_model(c)
