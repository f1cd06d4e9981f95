"""Dense CLIP feature methods (clipdistill/modeling/clip/dense.py) against transcriptions of their
authors' code, on a tiny random open_clip ViT whose weights are scaled so that every path
(attention, residual, MLP, positional embedding, norms, biases) changes the result.

Each ``_official_*`` function below re-types the relevant lines of the method's public code in its
own layout (sequence-first ``[L, B, C]`` tensors, ``bmm`` over ``B * heads``), applied to the
open_clip model's parameters: MaskCLIP (chongzhou96/MaskCLIP, mmseg ``VisionTransformer`` with
``return_qkv`` + ``MaskClipHead``), SCLIP (wangf3014/SCLIP, ``clip/model.py``), ClearCLIP
(mc-lan/ClearCLIP, ``open_clip/transformer.py``), NACLIP (sinahmr/NACLIP, ``clip/model.py``).
"""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipdistill.modeling.clip import vit
from clipdistill.modeling.clip.dense import DENSE_METHODS, dense_features
from clipdistill.modeling.clip import TOY_MODEL_NAME

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def visual():
    """The toy tower (2 blocks, width 64, 2 heads) in float64 with every weight randomised.

    (float64 so that 1e-5 tests the computation, not the rounding: the positional embedding is
    resampled in float32 by timm and by ``vit.resample_pos_embed``, which the network amplifies to
    a few 1e-6.)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(TOY_MODEL_NAME, pretrained=None, device="cpu")
        g = torch.Generator().manual_seed(1)
        for name, p in model.visual.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("bias"):
                p.data = 0.3 * r
            elif p.dim() == 1:  # LayerNorm weights, class embedding
                p.data = 1.0 + 0.3 * r if "ln" in name else r
            elif "positional_embedding" in name:
                p.data = r
            else:  # fan-in scaled: attention logits ~ N(0, 1), neither uniform nor one-hot
                p.data = r / math.sqrt(p[0].numel())
    return model.visual.double().eval().requires_grad_(False)


def _images(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- transcriptions of official code
def _mmseg_resize_pos_embed(pos_embed, input_shape, pos_shape):
    """MaskCLIP ``VisionTransformer.resize_pos_embed`` (mode 'bicubic')."""
    pos_h, pos_w = pos_shape
    cls_token_weight = pos_embed[:, 0]
    pos_embed_weight = pos_embed[:, (-1 * pos_h * pos_w) :]
    pos_embed_weight = pos_embed_weight.reshape(1, pos_h, pos_w, pos_embed.shape[2]).permute(
        0, 3, 1, 2
    )
    pos_embed_weight = F.interpolate(
        pos_embed_weight, size=input_shape, align_corners=False, mode="bicubic"
    )
    cls_token_weight = cls_token_weight.unsqueeze(1)
    pos_embed_weight = torch.flatten(pos_embed_weight, 2).transpose(1, 2)
    return torch.cat((cls_token_weight, pos_embed_weight), dim=1)


def _official_maskclip(v, img):
    """MaskCLIP: mmseg ViT forward with ``return_qkv`` in the last layer, ``final_norm``, then
    ``MaskClipHead.proj`` (a 1x1 conv holding CLIP's ``proj``) on ``v``."""
    x = v.conv1(img)
    hw_shape = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    B = x.shape[0]
    cls_tokens = v.class_embedding.view(1, 1, -1).expand(B, -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    pos_embed = v.positional_embedding.unsqueeze(0)
    if x.shape[1] != pos_embed.shape[1]:
        pos_embed = _mmseg_resize_pos_embed(pos_embed, hw_shape, v.grid_size)
    x = x + pos_embed
    x = v.ln_pre(x)  # pre_norm
    layers = v.transformer.resblocks
    for layer in layers[:-1]:
        x = layer(x)  # batch-first, as mmcv's attention with batch_first=True
    layer = layers[-1]
    y = layer.ln_1(x)  # norm1
    y = F.linear(y, layer.attn.in_proj_weight, layer.attn.in_proj_bias)
    N, L, C = y.shape
    y = y.view(N, L, 3, C // 3).permute(2, 0, 1, 3).reshape(3 * N, L, C // 3)
    y = F.linear(y, layer.attn.out_proj.weight, layer.attn.out_proj.bias)
    q, k, val = y.tensor_split(3, dim=0)
    val = val + x  # v += x
    val = val + layer.mlp(layer.ln_2(val))  # self.ffn(self.norm2(v), identity=v)
    val = v.ln_post(val)  # final_norm
    val = val[:, 1:]
    B, _, C = val.shape
    val = val.reshape(B, hw_shape[0], hw_shape[1], C).permute(0, 3, 1, 2).contiguous()
    return F.conv2d(val, v.proj.t()[:, :, None, None])  # MaskClipHead.proj


def _interpolate_pos_encoding(v, x, w, h):
    """SCLIP / ClearCLIP / NACLIP ``interpolate_pos_encoding`` (DINO's recipe)."""
    npatch = x.shape[1] - 1
    N = v.positional_embedding.shape[0] - 1
    if npatch == N and w == h:
        return v.positional_embedding
    class_pos_embed = v.positional_embedding[[0]]
    patch_pos_embed = v.positional_embedding[1:]
    dim = x.shape[-1]
    w0 = w // v.patch_size[0]
    h0 = h // v.patch_size[1]
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        mode="bicubic",
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        align_corners=False,
        recompute_scale_factor=False,
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def _official_stem(v, img):
    """The common start of SCLIP's / ClearCLIP's / NACLIP's ``VisionTransformer.forward``, up to
    the last block (returns ``[L, B, C]``)."""
    B, nc, w, h = img.shape
    x = v.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    x = torch.cat(
        [
            v.class_embedding.to(x.dtype)
            + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device),
            x,
        ],
        dim=1,
    )
    if x.shape[1] != v.positional_embedding.shape[0]:
        x = x + _interpolate_pos_encoding(v, x, w, h).to(x.dtype)
    else:
        x = x + v.positional_embedding.to(x.dtype)
    x = v.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    for blk in v.transformer.resblocks[:-1]:
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)  # the unchanged blocks (LND there)
    return x


def _official_tail(v, x, img):
    """``ln_post(x) @ proj`` on all tokens, patch tokens reshaped as the segmentors do."""
    x = x.permute(1, 0, 2)  # LND -> NLD
    feats = v.ln_post(x) @ v.proj
    feats = feats[:, 1:]
    p = v.patch_size[0]
    w, h = img.shape[-2] // p, img.shape[-1] // p
    return feats.permute(0, 2, 1).reshape(feats.shape[0], -1, w, h)


def _official_custom_attn(attn_layer, x, kind, addition=None):
    """``custom_attn`` of SCLIP (``csa``), ClearCLIP (``ClearCLIP``, ``MaskCLIP``) and NACLIP
    (``naclip``)."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim**-0.5
    q, k, val = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    val = val.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    if kind == "csa":  # SCLIP
        q_attn = torch.bmm(q, q.transpose(1, 2)) * scale
        k_attn = torch.bmm(k, k.transpose(1, 2)) * scale
        attn_weights = F.softmax(q_attn, dim=-1) + F.softmax(k_attn, dim=-1)
    elif kind == "ClearCLIP":
        qq_attn = torch.bmm(q, q.transpose(1, 2)) * scale
        attn_weights = F.softmax(qq_attn, dim=-1)
    elif kind == "MaskCLIP":  # ClearCLIP's code
        mask = torch.empty(q.shape[1], q.shape[1], dtype=q.dtype).to(q.device)
        mask.fill_(float("-inf"))
        mask.fill_diagonal_(0)
        mask = mask.unsqueeze(0).repeat(q.shape[0], 1, 1)
        attn_weights = F.softmax(mask, dim=-1)
    elif kind == "naclip":
        attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
        attn_weights += addition
        attn_weights = F.softmax(attn_weights, dim=-1)
    attn_output = torch.bmm(attn_weights, val)
    attn_output = attn_output.transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(attn_output)


def _official_sclip(v, img):
    x = _official_stem(v, img)
    for blk in v.transformer.resblocks[-1:]:
        x = x + _official_custom_attn(blk.attn, blk.ln_1(x), "csa")
        x = x + blk.mlp(blk.ln_2(x))
    return _official_tail(v, x, img)


def _official_clearclip(v, img, model_type="ClearCLIP"):
    """ClearCLIP's ``forward`` with ``ignore_residual=True`` and ``last_n_layers=1``."""
    x = _official_stem(v, img)
    output = 0
    for blk in v.transformer.resblocks[-1:]:
        output += _official_custom_attn(blk.attn, blk.ln_1(x), model_type)
    return _official_tail(v, output, img)


def _gaussian_window(dim1, dim2, std=1.0):
    constant = 1 / (std * math.sqrt(2))
    ks = list()
    for dim in [dim1, dim2]:
        start = -(dim - 1) / 2.0
        k = torch.linspace(
            start=start * constant, end=(start + (dim - 1)) * constant, steps=dim, dtype=torch.float
        )
        ks.append(k)
    dist_square_to_mu = (torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0)
    return torch.exp(-dist_square_to_mu)


def _get_attention_addition(dim1, dim2, window, adjust_for_cls=True):
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2))
    m = m.permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(
        m.view(-1, dim1, dim2).unsqueeze(1), window.unsqueeze(0).unsqueeze(1), padding="same"
    ).squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    if adjust_for_cls:
        v_adjusted = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
        out = torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), v_adjusted])
    return out


def _official_naclip(v, img, std=5.0):
    """NACLIP with ``arch='reduced'``, ``attn_strategy='naclip'``."""
    p = v.patch_size[0]
    n_patches = (img.shape[2] // p, img.shape[3] // p)
    x = _official_stem(v, img)
    blk = v.transformer.resblocks[-1]
    window_size = [side * 2 - 1 for side in n_patches]
    window = _gaussian_window(*window_size, std=std)
    addition = _get_attention_addition(*n_patches, window).unsqueeze(0).to(x.dtype)
    x = _official_custom_attn(blk.attn, blk.ln_1(x), "naclip", addition)
    return _official_tail(v, x, img)


# ------------------------------------------------------------------------------------------ tests
SIZES = [(224, 224), (160, 208)]  # native grid (14x14), and a non-square resampled one (10x13)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "method, official, pos",
    [
        ("maskclip", _official_maskclip, None),
        ("sclip", _official_sclip, None),
        ("clearclip", _official_clearclip, None),
        ("naclip", _official_naclip, None),
        # ClearCLIP's "MaskCLIP" with ignore_residual is value_only (its code resamples the
        # positional embedding DINO's way; clipdistill's default keeps the teacher's "size")
        ("value_only", lambda v, x: _official_clearclip(v, x, "MaskCLIP"), "scale_factor"),
    ],
)
def test_method_matches_official_code(visual, method, official, pos, size):
    img = _images(*size)
    ours = dense_features(visual, img, method, pos_resampling=pos)
    ref = official(visual, img)
    assert ours.shape == ref.shape == (2, 64, size[0] // 16, size[1] // 16)
    torch.testing.assert_close(ours, ref, **TOL)


def test_value_only_default_resampling_is_the_teachers(visual):
    """``value_only`` with its default ("size") resampling: bicubic to the target size (the
    teacher's historical computation), which differs from the scale-factor recipe."""
    img = _images(160, 208)
    ours = dense_features(visual, img, "value_only")
    x, grid = vit.vit_tokens(visual, img, "size")
    assert grid == (10, 13)
    last = visual.transformer.resblocks[-1]
    x = vit.run_blocks(visual, x, visual.transformer.resblocks[:-1])
    e = x.shape[-1]
    y = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * e :], last.attn.in_proj_bias[2 * e :])
    y = last.attn.out_proj(y)
    ref = vit.tokens_to_map(visual, y[:, 1:], grid)
    torch.testing.assert_close(ours, ref, **TOL)
    other = dense_features(visual, img, "value_only", pos_resampling="scale_factor")
    assert (ours - other).abs().max() > 1e-3


def test_every_path_matters(visual):
    """The methods differ from each other by far more than the tolerance (the random weights
    make residual, MLP and each attention variant count)."""
    img = _images(160, 208)
    feats = {m: dense_features(visual, img, m) for m in DENSE_METHODS}
    names = sorted(feats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rel = (feats[a] - feats[b]).norm() / feats[a].norm()
            assert rel > 0.05, (a, b, float(rel))


def test_sequence_first_stack_gives_the_same_features(visual):
    """Older open_clip runs the blocks sequence-first; ``run_blocks`` follows the stack."""
    img = _images(160, 208)
    ref = dense_features(visual, img, "sclip")
    t = visual.transformer
    try:
        t.batch_first = False
        for blk in t.resblocks:
            blk.attn.batch_first = False
        torch.testing.assert_close(dense_features(visual, img, "sclip"), ref, **TOL)
    finally:
        t.batch_first = True
        for blk in t.resblocks:
            blk.attn.batch_first = True


def test_unknown_method_names_the_choices(visual):
    with pytest.raises(ValueError, match="DENSE_METHOD.*|maskclip"):
        dense_features(visual, _images(32, 32), "mask_clip")
