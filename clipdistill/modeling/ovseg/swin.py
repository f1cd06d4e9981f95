"""Swin Transformer backbone for OVSeg's proposal generator (detectron2 ``Backbone``).

The parameter names are those of the detectron2 port of Swin used by MaskFormer and OVSeg
(``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*`` at the *end* of
stage ``i``, one output LayerNorm ``norm{i}`` per stage), so OVSeg checkpoints load without
renaming. The building blocks are timm's (``WindowAttention``, ``Mlp``, ``PatchMerging``,
``PatchEmbed``, ``DropPath``); the block and stage logic is written here because timm's Swin
differs where it matters for arbitrary input sizes:

* the feature map is padded to a multiple of the window size *before* the cyclic shift, and the
  shifted-window attention mask is built for the padded map (timm shifts the unpadded map and
  pads afterwards, which gives other numbers whenever a side is not a window multiple);
* the window is never shrunk to the feature size (timm shrinks it and drops the shift when the
  feature map is smaller than a window).

timm keeps ``relative_position_index`` as a non-persistent buffer; OVSeg checkpoints store it
(``OVSeg.convert_checkpoint`` checks the stored values and drops them).
"""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models.swin_transformer import (
    PatchMerging,
    WindowAttention,
    get_relative_position_index,
    window_partition,
    window_reverse,
)
from torch import nn

from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

__all__ = ["build_ovseg_swin_backbone", "SwinBackbone", "shifted_window_mask"]


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, device=None
) -> torch.Tensor:
    """Additive attention mask ``[num_windows, window², window²]`` (0 or -100) of the shifted
    windows of a ``height x width`` map (already padded to window multiples): tokens that the
    cyclic shift brought together from different image regions do not attend to each other."""
    img = torch.zeros((1, height, width, 1), device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for h in cuts:
        for w in cuts:
            img[:, h, w, :] = label
            label += 1
    windows = window_partition(img, (window, window)).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class SwinBlock(nn.Module):
    """One (shifted-)window attention block; input and output ``[B, H*W, C]``."""

    def __init__(
        self, dim, num_heads, window, shift, mlp_ratio, qkv_bias, drop, attn_drop, drop_path
    ):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            num_heads,
            window_size=window,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw, attn_mask) -> torch.Tensor:
        H, W = hw
        B, L, C = x.shape
        win = self.window
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (win - H % win) % win, (win - W % win) % win
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = x.shape[1:3]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, (win, win)).view(-1, win * win, C)
        windows = self.attn(windows, mask=attn_mask if self.shift else None)
        x = window_reverse(windows.view(-1, win, win, C), (win, win), Hp, Wp)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :H, :W, :].reshape(B, H * W, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` blocks (alternately regular and shifted windows), then an optional
    ``PatchMerging`` (named ``downsample`` as in the detectron2 port)."""

    def __init__(
        self,
        dim,
        depth,
        num_heads,
        window,
        mlp_ratio,
        qkv_bias,
        drop,
        attn_drop,
        drop_path: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window,
                0 if i % 2 == 0 else window // 2,
                mlp_ratio,
                qkv_bias,
                drop,
                attn_drop,
                drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, hw):
        H, W = hw
        win = self.window
        Hp, Wp = -(-H // win) * win, -(-W // win) * win
        mask = shifted_window_mask(Hp, Wp, win, win // 2, device=x.device).to(x.dtype)
        for blk in self.blocks:
            x = blk(x, hw, mask)
        if self.downsample is None:
            return x, x, hw
        down = self.downsample(x.view(x.shape[0], H, W, -1))
        return x, down.flatten(1, 2), ((H + 1) // 2, (W + 1) // 2)


class SwinBackbone(Backbone):
    """Swin Transformer returning ``res2..res5`` (strides 4..32), each through its own LayerNorm.

    Args:
        pretrain_img_size: image size of the pretraining (only sizes ``absolute_pos_embed``).
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, drop_rate,
        attn_drop_rate, drop_path_rate, ape, patch_norm: as in the Swin paper / detectron2 port.
        out_features: subset of ``res2..res5`` to return.
    """

    def __init__(
        self,
        *,
        pretrain_img_size=224,
        patch_size=4,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        ape=False,
        patch_norm=True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    ):
        super().__init__()
        n = len(depths)
        if len(num_heads) != n:
            raise ValueError(
                f"MODEL.SWIN.NUM_HEADS {list(num_heads)} must have one entry per "
                f"stage of MODEL.SWIN.DEPTHS {list(depths)}"
            )
        names = [f"res{i + 2}" for i in range(n)]
        bad = [f for f in out_features if f not in names]
        if bad:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES {bad} are not among {names}")
        self.patch_embed = PatchEmbed(
            img_size=None,
            patch_size=patch_size,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm if patch_norm else None,
            output_fmt="NHWC",
            strict_img_size=False,
            dynamic_img_pad=True,
        )
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.num_features = [int(embed_dim * 2**i) for i in range(n)]
        self.layers = nn.ModuleList(
            SwinStage(
                self.num_features[i],
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                qkv_bias,
                drop_rate,
                attn_drop_rate,
                dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < n - 1,
            )
            for i in range(n)
        )
        for i in range(n):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._out_features = list(out_features)
        self._out_feature_strides = {f"res{i + 2}": patch_size * 2**i for i in range(n)}
        self._out_feature_channels = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"Swin expects images [N, C, H, W], got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # B, Wh, Ww, C
        hw = tuple(x.shape[1:3])
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=hw, mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)
        x = self.pos_drop(x.flatten(1, 2))
        outs = {}
        for i, stage in enumerate(self.layers):
            out, x, next_hw = stage(x, hw)
            name = f"res{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outs[name] = (
                    out.view(-1, hw[0], hw[1], self.num_features[i])
                    .permute(0, 3, 1, 2)
                    .contiguous()
                )
            hw = next_hw
        return outs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    def relative_position_indices(self) -> Dict[str, torch.Tensor]:
        """``{state-dict key: value}`` of the relative position indices that OVSeg checkpoints store
        (timm recomputes them; see ``OVSeg.convert_checkpoint``)."""
        out = {}
        for name, m in self.named_modules():
            if isinstance(m, WindowAttention):
                out[f"{name}.relative_position_index"] = get_relative_position_index(*m.window_size)
        return out


@BACKBONE_REGISTRY.register()
def build_ovseg_swin_backbone(cfg, input_shape: ShapeSpec) -> SwinBackbone:
    """``MODEL.BACKBONE.NAME: build_ovseg_swin_backbone`` built from ``MODEL.SWIN.*`` (the
    detectron2 Swin port of MaskFormer and OVSeg registers the same module as D2SwinTransformer)."""
    s = cfg.MODEL.SWIN
    if input_shape.channels != 3:
        raise ValueError(f"the Swin backbone takes RGB images, got {input_shape.channels} channels")
    return SwinBackbone(
        pretrain_img_size=s.PRETRAIN_IMG_SIZE,
        patch_size=s.PATCH_SIZE,
        embed_dim=s.EMBED_DIM,
        depths=tuple(s.DEPTHS),
        num_heads=tuple(s.NUM_HEADS),
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_rate=s.DROP_RATE,
        attn_drop_rate=s.ATTN_DROP_RATE,
        drop_path_rate=s.DROP_PATH_RATE,
        ape=s.APE,
        patch_norm=s.PATCH_NORM,
        out_features=tuple(s.OUT_FEATURES),
    )
