"""Tests of the frozen CLIP teacher (clipdistill/modeling/teacher), on the tiny random toy CLIP."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before open_clip / huggingface_hub are imported

import logging  # noqa: E402

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES  # noqa: E402
from torch import nn  # noqa: E402

from clipdistill.modeling.clip import loader as clip_loader  # noqa: E402
from clipdistill.modeling.clip import vit  # noqa: E402
from clipdistill.modeling.clip.dense import dense_features  # noqa: E402
from clipdistill.modeling.clip import PROMPT_TEMPLATES, TOY_MODEL_NAME  # noqa: E402
from clipdistill.modeling.teacher import CLIPTeacher  # noqa: E402

C = 64  # joint width of the toy model


@pytest.fixture(scope="module")
def teacher():
    return CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", templates="simple")


def _images(b=2, h=224, w=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255.0


def _normalise(teacher, images):
    v = teacher.model.visual
    mean = torch.tensor(v.image_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(v.image_std).view(1, 3, 1, 1) * 255
    return (images - mean) / std


def _manual_dense(teacher, images, pos):
    """MaskCLIP by hand from the tower's own modules; ``pos``: positional embedding to use."""
    v = teacher.model.visual
    x = v.conv1(_normalise(teacher, images))
    b, _, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.view(1, 1, -1).expand(b, -1, -1), x], dim=1) + pos
    x = v.ln_pre(x)
    for block in v.transformer.resblocks[:-1]:
        x = block(x)
    last = v.transformer.resblocks[-1]
    e = last.attn.embed_dim
    y = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * e :], last.attn.in_proj_bias[2 * e :])
    y = F.linear(y, last.attn.out_proj.weight, last.attn.out_proj.bias)
    y = v.ln_post(y[:, 1:]) @ v.proj
    return F.normalize(y.reshape(b, h, w, -1).permute(0, 3, 1, 2), dim=1)


def _interp_pos(teacher, grid, mode):
    v = teacher.model.visual
    pos = v.positional_embedding
    n = v.grid_size
    p = pos[1:].reshape(1, n[0], n[1], -1).permute(0, 3, 1, 2)
    kw = {"align_corners": False} if mode == "bicubic" else {}
    p = F.interpolate(p, size=grid, mode=mode, **kw).permute(0, 2, 3, 1).reshape(-1, pos.shape[1])
    return torch.cat([pos[:1], p], dim=0)


# ---- images -------------------------------------------------------------------------------------
def test_toy_model_registered():
    assert TOY_MODEL_NAME in open_clip.list_models()


def test_encode_image(teacher):
    out = teacher.encode_image(_images(3, 300, 200))
    assert out.shape == (3, C) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # it is CLIP's own image embedding of the normalised 224x224 view
    x = _images(2)
    expected = F.normalize(teacher.model.encode_image(_normalise(teacher, x)), dim=-1)
    torch.testing.assert_close(teacher.encode_image(x), expected, atol=1e-5, rtol=1e-5)


def test_encode_image_non_native_size():
    t = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", image_size=256)
    out = t.encode_image(_images(2, 100, 120))
    assert out.shape == (2, C)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    "in_hw, size, grid",
    [
        ((224, 224), 224, (14, 14)),
        ((224, 224), None, (28, 28)),  # dense_image_size 448 by default
        ((100, 150), 448, (28, 28)),
        ((480, 320), (320, 480), (20, 30)),
        ((320, 480), (320, 480), (20, 30)),
        ((50, 60), (230, 250), (14, 16)),  # rounded to multiples of 16: 224 x 256
        ((50, 60), (7, 300), (1, 19)),
    ],
)
def test_encode_image_dense_shapes(teacher, in_hw, size, grid):
    out = teacher.encode_image_dense(_images(2, *in_hw), size=size)
    assert out.shape == (2, C, *grid) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, *grid))


def test_dense_native_size_equals_manual_maskclip(teacher):
    x = _images(2)
    out = teacher.encode_image_dense(x, size=224)
    expected = _manual_dense(teacher, x, teacher.model.visual.positional_embedding)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_dense_positional_embedding_interpolation(teacher):
    x = _images(1, 320, 480)
    out = teacher.encode_image_dense(x, size=(320, 480))
    bicubic = _manual_dense(teacher, x, _interp_pos(teacher, (20, 30), "bicubic"))
    torch.testing.assert_close(out, bicubic, atol=1e-5, rtol=1e-5)
    naive = _manual_dense(teacher, x, _interp_pos(teacher, (20, 30), "nearest"))
    assert (out - naive).abs().max() > 1e-3
    # the class-token position is kept as is
    pos = vit.resample_pos_embed(teacher.model.visual, (20, 30))
    assert pos.shape == (1 + 20 * 30, 64)
    torch.testing.assert_close(pos[0], teacher.model.visual.positional_embedding[0])


def test_value_path_by_hand(teacher):
    block = teacher.model.visual.transformer.resblocks[-1]
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1))
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    v = F.linear(block.ln_1(x), w[128:192], b[128:192])
    expected = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    with torch.no_grad():
        got = vit.attention_output(block, vit.attention_qkv(block, block.ln_1(x))[2])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # with a single token, real attention attends to itself only: same result
        attn_out = block.attention(q_x=block.ln_1(x[:, :1]))
        torch.testing.assert_close(got[:, :1], attn_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["maskclip", "sclip", "clearclip", "naclip"])
def test_dense_method_is_configurable(method):
    from detectron2.config import get_cfg

    from clipdistill.config import add_clipdistill_config

    cfg = get_cfg()
    add_clipdistill_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.CLIPDISTILL.TEACHER.NAME",
            TOY_MODEL_NAME,
            "MODEL.CLIPDISTILL.TEACHER.WEIGHTS",
            "",
            "MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD",
            method,
        ]
    )
    t = CLIPTeacher(cfg)
    assert t.dense_method == method
    x = _images(1, 96, 128)
    expected = dense_features(t.model.visual, _normalise(t, x), method)
    out = t.encode_image_dense(x, size=(96, 128))
    torch.testing.assert_close(out, F.normalize(expected, dim=1), atol=1e-5, rtol=1e-5)
    default = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", templates="single")
    assert default.dense_method == "value_only"
    assert (out - default.encode_image_dense(x, size=(96, 128))).abs().max() > 1e-2


def test_unknown_dense_method_names_the_key():
    with pytest.raises(ValueError, match="DENSE_METHOD='mask_clip'.*maskclip"):
        CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", dense_method="mask_clip")


def test_dense_resnet_tower(monkeypatch):
    def tiny_rn(model_name, pretrained, force_quick_gelu):
        assert model_name == "RN50" and pretrained is None
        torch.manual_seed(0)
        return open_clip.create_model(
            "RN50",
            pretrained=None,
            embed_dim=C,
            vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "head_width": 64},
            text_cfg={
                "context_length": 77,
                "vocab_size": 49408,
                "width": 32,
                "heads": 2,
                "layers": 1,
            },
        )

    monkeypatch.setattr(clip_loader, "_create_open_clip_model", tiny_rn)
    t = CLIPTeacher(model_name="RN50", weights="", image_size=64, dense_image_size=128)
    assert t.patch_size == 32 and t.embed_dim == C
    assert t.encode_image(_images(2, 80, 90)).shape == (2, C)
    x = _images(2, 128, 96)
    out = t.encode_image_dense(x, size=(128, 96))
    assert out.shape == (2, C, 4, 3)
    v = t.model.visual
    with torch.no_grad():
        f = _normalise(t, x)
        f = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(f))))).permute(0, 2, 3, 1)
        f = F.linear(f, v.attnpool.v_proj.weight, v.attnpool.v_proj.bias)
        f = F.linear(f, v.attnpool.c_proj.weight, v.attnpool.c_proj.bias)
    torch.testing.assert_close(out, F.normalize(f.permute(0, 3, 1, 2), dim=1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="IMAGE_SIZE"):
        CLIPTeacher(model_name="RN50", weights="", image_size=96)


def test_bad_image_input(teacher):
    with pytest.raises(ValueError, match="B, 3, H, W"):
        teacher.encode_image(torch.rand(3, 224, 224))


# ---- frozen -------------------------------------------------------------------------------------
def test_frozen(teacher):
    assert all(not p.requires_grad for p in teacher.parameters())
    parent = nn.Module()
    parent.head = nn.Linear(2, 2)
    parent.teacher = teacher
    parent.train()
    assert parent.training and parent.head.training
    assert not teacher.training and not any(m.training for m in teacher.modules())
    teacher.train(True)
    assert not any(m.training for m in teacher.modules())
    keys = list(parent.state_dict().keys())
    assert keys == ["head.weight", "head.bias"]
    assert len(teacher.state_dict()) == 0
    # non-persistent normalisation buffers are still module buffers (they move with .to())
    assert {"pixel_mean", "pixel_std"} <= {n for n, _ in teacher.named_buffers()}
    x = _images(1).requires_grad_(True)
    assert not teacher.encode_image(x).requires_grad
    assert not teacher.encode_image_dense(x).requires_grad
    assert not teacher.encode_text(["cat"]).requires_grad


def test_buffers_follow_device(teacher):
    device = "cuda" if torch.cuda.is_available() else "meta"
    if device == "meta":
        moved = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="").to("meta")
        assert moved.pixel_mean.device.type == "meta" and moved.device.type == "meta"
        return
    t = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="").to(device)
    assert t.device.type == "cuda"
    assert t.encode_image_dense(_images(1)).device.type == "cuda"


def test_random_init_is_deterministic(teacher):
    torch.manual_seed(123)
    other = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="")
    for a, b in zip(teacher.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)


# ---- text ---------------------------------------------------------------------------------------
def _count_text_calls(monkeypatch, t):
    calls = []
    original = t.model.encode_text

    def wrapped(tokens, *args, **kwargs):
        calls.append(tokens.shape[0])
        return original(tokens, *args, **kwargs)

    monkeypatch.setattr(t.model, "encode_text", wrapped)
    return calls


def test_encode_text_mean_of_templates(teacher, monkeypatch):
    monkeypatch.setitem(PROMPT_TEMPLATES, "simple", tuple(SIMPLE_IMAGENET_TEMPLATES[:2]))
    t = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", templates="simple")
    out = t.encode_text([" cat", "traffic light "])
    assert out.shape == (2, C) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    tok = open_clip.get_tokenizer(TOY_MODEL_NAME)
    rows = []
    with torch.no_grad():
        for name in ["cat", "traffic light"]:
            prompts = [tpl(name) for tpl in SIMPLE_IMAGENET_TEMPLATES[:2]]
            e = F.normalize(t.model.encode_text(tok(prompts)), dim=-1)
            rows.append(F.normalize(e.mean(0), dim=-1))
    torch.testing.assert_close(out, torch.stack(rows), atol=1e-5, rtol=1e-5)


def test_encode_text_memory_cache(teacher, monkeypatch, tmp_path):
    t = CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", text_cache_dir=str(tmp_path))
    calls = _count_text_calls(monkeypatch, t)
    t.text_encoder.batch_size = 80  # 80 templates x 2 names -> one name (80 prompts) a call
    a = t.encode_text(["cat", "dog"])
    assert calls == [80, 80]
    b = t.encode_text(["cat ", "dog"])
    assert len(calls) == 2 and torch.equal(a, b)
    # random weights: never written to disk
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def toy_weights(tmp_path, teacher):
    path = tmp_path / "toy_open_clip.bin"
    torch.save(teacher.model.state_dict(), path)
    return path


def test_local_weights_and_disk_cache(teacher, toy_weights, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    t = CLIPTeacher(model_name=TOY_MODEL_NAME, weights=str(toy_weights), text_cache_dir=str(cache))
    for a, b in zip(teacher.model.state_dict().values(), t.model.state_dict().values()):
        assert torch.equal(a, b)
    calls = _count_text_calls(monkeypatch, t)
    names = ["cat", "dog", "sky"]
    first = t.encode_text(names)
    assert calls and len(list(cache.glob("*.safetensors"))) == 1
    assert not list(cache.glob(".tmp-*"))

    # a new teacher with the same weights reads the disk cache: no text-tower call
    t2 = CLIPTeacher(model_name=TOY_MODEL_NAME, weights=str(toy_weights), text_cache_dir=str(cache))
    calls2 = _count_text_calls(monkeypatch, t2)
    torch.testing.assert_close(t2.encode_text(names), first, atol=0, rtol=0)
    assert calls2 == []
    # another vocabulary or template set is another file
    t2.encode_text(["cat"])
    assert len(list(cache.glob("*.safetensors"))) == 2

    # a corrupt file is recomputed and overwritten
    path = t2.text_encoder.cache_path(names)
    with open(path, "wb") as f:
        f.write(b"not a safetensors file")
    t3 = CLIPTeacher(model_name=TOY_MODEL_NAME, weights=str(toy_weights), text_cache_dir=str(cache))
    calls3 = _count_text_calls(monkeypatch, t3)
    with caplog.at_level(logging.WARNING):
        again = t3.encode_text(names)
    assert calls3 and "corrupt" in caplog.text
    torch.testing.assert_close(again, first, atol=1e-6, rtol=1e-6)
    t4 = CLIPTeacher(model_name=TOY_MODEL_NAME, weights=str(toy_weights), text_cache_dir=str(cache))
    calls4 = _count_text_calls(monkeypatch, t4)
    t4.encode_text(names)
    assert calls4 == []


def test_default_cache_dir_uses_xdg(toy_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    t = CLIPTeacher(model_name=TOY_MODEL_NAME, weights=str(toy_weights), templates="single")
    t.encode_text(["cat"])
    assert len(list((tmp_path / "xdg" / "clipdistill" / "text_embeddings").iterdir())) == 1


@pytest.mark.parametrize(
    "names, match",
    [
        ([], "empty"),
        (["cat", "dog", " cat"], "duplicates.*'cat'"),
        (["cat", "  "], "empty names.*'  '"),
        (["cat", ""], "empty names"),
        ("cat", "not the string"),
    ],
)
def test_encode_text_bad_names(teacher, names, match):
    with pytest.raises(ValueError, match=match):
        teacher.encode_text(names)


def test_unknown_templates():
    with pytest.raises(ValueError, match="MODEL.CLIPDISTILL.TEACHER.TEMPLATES"):
        CLIPTeacher(model_name=TOY_MODEL_NAME, weights="", templates="fancy")


# ---- weights and config -------------------------------------------------------------------------
def test_unreachable_tag_fails_fast_with_advice(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    # never reach the network nor a warm local HF cache
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        CLIPTeacher(model_name="ViT-B-16", weights="openai")
    msg = str(info.value)
    assert "MODEL.CLIPDISTILL.TEACHER.WEIGHTS" in msg and "'openai'" in msg
    assert "ViT-B-16" in msg and "open_clip_pytorch_model.bin" in msg
    assert "ViT-B-16-quickgelu" in msg


def test_missing_local_file():
    with pytest.raises(FileNotFoundError, match="MODEL.CLIPDISTILL.TEACHER.WEIGHTS.*nonexistent"):
        CLIPTeacher(model_name=TOY_MODEL_NAME, weights="/nonexistent/x.bin")


def test_unknown_tag():
    with pytest.raises(RuntimeError, match="MODEL.CLIPDISTILL.TEACHER.WEIGHTS='no_such_tag'"):
        CLIPTeacher(model_name=TOY_MODEL_NAME, weights="no_such_tag")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="MODEL.CLIPDISTILL.TEACHER.NAME='ViT-Nope'.*ViT-B-16"):
        CLIPTeacher(model_name="ViT-Nope", weights="")


def test_wrong_architecture_file(toy_weights):
    with pytest.raises(RuntimeError, match="MODEL.CLIPDISTILL.TEACHER.WEIGHTS"):
        CLIPTeacher(model_name="ViT-B-32", weights=str(toy_weights))


def test_from_config():
    from detectron2.config import get_cfg

    from clipdistill.config import add_clipdistill_config

    cfg = get_cfg()
    add_clipdistill_config(cfg)
    cfg.MODEL.CLIPDISTILL.TEACHER.NAME = TOY_MODEL_NAME
    cfg.MODEL.CLIPDISTILL.TEACHER.WEIGHTS = ""
    cfg.MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE = 320
    cfg.MODEL.CLIPDISTILL.TEACHER.TEMPLATES = "single"
    t = CLIPTeacher(cfg)
    assert isinstance(t, CLIPTeacher)
    assert (t.image_size, t.dense_image_size, t.templates) == (224, 320, "single")
    assert t.encode_image_dense(_images(1)).shape == (1, C, 20, 20)
