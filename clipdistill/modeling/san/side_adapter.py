"""SAN's side adapter: a small ViT (timm) that reads the image, receives CLIP's features through
``AddFusion`` layers, and predicts mask proposals and the attention biases of the recognition.

Token layout inside the adapter: ``[Q query tokens | H*W visual tokens]``. The position
embedding (``query_pos_embed`` for the queries, the ViT's own ``pos_embed`` for the grid) is
added before the first block and again after every block but the last; CLIP layer ``src`` is
fused into the visual tokens after block ``tgt`` for every ``"src->tgt"`` of the fusion map
(``tgt = 0``: before the first block). The outputs of the blocks listed in
``deep_supervision_idxs`` (1-based) are decoded by ``MLPMaskDecoder``: all of them in training,
the last one at inference.

The ViT is built by timm (``timm.create_model``) without class token, final norm or head; the
adapter sizes of the paper are registered with timm as ``vit_w{144,192,240,288}n6d8_patch16``
(width, 6 heads, depth 8, patch 16), and any other timm ViT name works too (e.g. ``test_vit``).
"""

from typing import Dict, List, Sequence, Tuple

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..layers import MLP
from .layers import AddFusion, conv1x1

__all__ = ["SideAdapterNetwork", "MLPMaskDecoder", "parse_fusion_map", "ADAPTER_VITS"]

#: the side-adapter ViTs of the SAN paper: name -> (width, heads, depth), patch 16
ADAPTER_VITS = {
    "vit_w144n6d8_patch16": (144, 6, 8),
    "vit_w192n6d8_patch16": (192, 6, 8),
    "vit_w240n6d8_patch16": (240, 6, 8),
    "vit_w288n6d8_patch16": (288, 6, 8),
}


def _adapter_vit_factory(name: str, width: int, heads: int, depth: int):
    def create(pretrained: bool = False, **kwargs) -> VisionTransformer:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights (SAN trains it from scratch)")
        args = dict(patch_size=16, embed_dim=width, depth=depth, num_heads=heads)
        # a pretrained config without weights (timm warns when there is none)
        kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or {"num_classes": 0}
        return build_model_with_cfg(VisionTransformer, name, False, **dict(args, **kwargs))

    create.__name__ = name
    create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"SAN side-adapter ViT: width {width}, {heads} heads, depth {depth}, patch 16."
    return create


for _name, (_w, _h, _d) in ADAPTER_VITS.items():
    if not timm.is_model(_name):
        register_model(_adapter_vit_factory(_name, _w, _h, _d))


def parse_fusion_map(fusion_map: Sequence[str]) -> Dict[int, int]:
    """``["0->0", "3->1", ...]`` (CLIP layer -> adapter block) -> ``{adapter block: CLIP layer}``.

    Raises:
        ValueError: an entry that is not ``"<int>-><int>"``, or two entries for one block.
    """
    out: Dict[int, int] = {}
    for entry in fusion_map:
        parts = str(entry).split("->")
        try:
            src, tgt = (int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"MODEL.SIDE_ADAPTER.FUSION_MAP entry {entry!r} is not "
                "'<clip layer>-><adapter block>'"
            ) from None
        if tgt in out:
            raise ValueError(f"MODEL.SIDE_ADAPTER.FUSION_MAP fuses twice into adapter block {tgt}")
        out[tgt] = src
    return out


class MLPMaskDecoder(nn.Module):
    """Mask proposals and attention biases from the adapter's query and visual tokens.

    ``mask[b, q] = <query_mlp(query)[b, q], pix_mlp(x)[b, :, h, w]>`` and, per recognition layer
    ``l`` and CLIP head ``n``, ``bias[b, l, n, q] = s * <query_mlp(query)[b, q],
    attn_mlp(x)[b, l, n, :, h, w]> + t`` with the learned scalar affine ``bias_scaling``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        total_heads: int = 1,
        total_layers: int = 1,
        embed_channels: int = 256,
        mlp_channels: int = 256,
        mlp_num_layers: int = 3,
        rescale_attn_bias: bool = False,
    ):
        super().__init__()
        self.total_heads = total_heads
        self.total_layers = total_layers
        self.query_mlp = MLP(in_channels, mlp_channels, embed_channels, mlp_num_layers)
        self.pix_mlp = MLP(in_channels, mlp_channels, embed_channels, mlp_num_layers, conv1x1)
        self.attn_mlp = MLP(
            in_channels,
            mlp_channels,
            embed_channels * total_heads * total_layers,
            mlp_num_layers,
            conv1x1,
        )
        self.bias_scaling = nn.Linear(1, 1) if rescale_attn_bias else nn.Identity()

    def forward(
        self, query: torch.Tensor, x: torch.Tensor
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            query: ``[B, Q, C]``. x: ``[B, C, H, W]``.

        Returns:
            mask logits ``[B, Q, H, W]`` and ``total_layers`` attention biases
            ``[B, heads, Q, H, W]``.
        """
        query = self.query_mlp(query)
        pix = self.pix_mlp(x)
        b, c, h, w = pix.shape
        masks = torch.einsum("bqc,bchw->bqhw", query, pix)
        attn = self.attn_mlp(x).reshape(b, self.total_layers, self.total_heads, c, h, w)
        bias = torch.einsum("bqc,blnchw->blnqhw", query, attn)
        bias = self.bias_scaling(bias[..., None])[..., 0]
        return masks, list(bias.unbind(1))


class SideAdapterNetwork(nn.Module):
    """The side adapter (see the module docstring).

    Args:
        vit_name: timm model name of the adapter ViT (a plain ViT without register tokens).
        image_size: the ViT's native input size (its ``pos_embed`` grid is ``image_size / 16``).
        drop_path_rate: stochastic depth of the ViT.
        num_queries: Q.
        fusion_map: ``{adapter block: CLIP layer}`` (``parse_fusion_map``).
        clip_channels: width of the CLIP features.
        deep_supervision_idxs: 1-based adapter blocks whose outputs are decoded in training.
        attn_bias: keyword arguments of ``MLPMaskDecoder`` other than ``in_channels``.
    """

    def __init__(
        self,
        *,
        vit_name: str,
        image_size: int,
        drop_path_rate: float,
        num_queries: int,
        fusion_map: Dict[int, int],
        clip_channels: int,
        deep_supervision_idxs: Sequence[int],
        attn_bias: dict,
    ):
        super().__init__()
        try:
            vit = timm.create_model(
                vit_name,
                pretrained=False,
                img_size=image_size,
                drop_path_rate=drop_path_rate,
                num_classes=0,
                global_pool="",
                class_token=False,
                final_norm=False,
                fc_norm=False,
                dynamic_img_size=True,
            )
        except RuntimeError as e:  # timm: unknown model
            raise ValueError(
                f"MODEL.SIDE_ADAPTER.VIT_NAME={vit_name!r}: {e}. SAN's adapters are "
                f"{sorted(ADAPTER_VITS)}"
            ) from e
        if not isinstance(vit, VisionTransformer) or vit.num_prefix_tokens != 0:
            raise ValueError(
                f"MODEL.SIDE_ADAPTER.VIT_NAME={vit_name!r} must be a timm VisionTransformer "
                f"without register tokens"
            )
        self.vit_model = vit
        depth = len(vit.blocks)
        bad = [i for i in deep_supervision_idxs if not 1 <= i <= depth]
        bad += [i for i in fusion_map if not 0 <= i <= depth]
        if bad or not deep_supervision_idxs:
            raise ValueError(
                f"MODEL.SIDE_ADAPTER: DEEP_SUPERVISION_IDXS {list(deep_supervision_idxs)} "
                f"(1-based, not empty) and the adapter blocks of FUSION_MAP {fusion_map} "
                f"(0 = before the first "
                f"block) must lie in [0, {depth}] for the {depth}-block {vit_name}"
            )
        width = vit.num_features
        self.num_queries = num_queries
        self.query_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        self.fusion_layers = nn.ModuleDict(
            {f"layer_{tgt}": AddFusion(clip_channels, width) for tgt in fusion_map}
        )
        self.fusion_map = dict(fusion_map)
        self.mask_decoder = MLPMaskDecoder(in_channels=width, **attn_bias)
        self.deep_supervision_idxs = sorted(deep_supervision_idxs)

    @property
    def clip_layers_needed(self) -> int:
        """The deepest CLIP layer the fusion reads (0 = the embedded input)."""
        return max(self.fusion_map.values(), default=0)

    def forward(
        self, image: torch.Tensor, clip_features: Dict[int, torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[List[torch.Tensor]]]:
        """
        Args:
            image: ``[B, 3, H, W]`` normalised, H and W multiples of 16.
            clip_features: CLIP layer index -> ``[B, C_clip, h, w]``.

        Returns:
            Per decoded output (training: one per deep-supervision block; inference: the last),
            the mask logits ``[B, Q, H/16, W/16]`` and the list of attention biases
            ``[B, heads, Q, H/16, W/16]`` (one per recognition layer group).
        """
        features = self.forward_features(image, clip_features)
        if not self.training:
            features = features[-1:]
        masks, biases = [], []
        for query, x in features:
            m, b = self.mask_decoder(query, x)
            masks.append(m)
            biases.append(b)
        return masks, biases

    def _pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        pos = self.vit_model.pos_embed
        if pos.shape[1] != grid[0] * grid[1]:
            # resized only when the token count differs, as the published model does
            pos = resample_abs_pos_embed(
                pos,
                new_size=list(grid),
                old_size=list(self.vit_model.patch_embed.grid_size),
                num_prefix_tokens=0,
                interpolation="bicubic",
                antialias=False,
            )
        return torch.cat([self.query_pos_embed.expand(pos.shape[0], -1, -1), pos], dim=1)

    def forward_features(
        self, image: torch.Tensor, clip_features: Dict[int, torch.Tensor]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """``(query [B, Q, C], visual [B, C, h, w])`` after each deep-supervision block."""
        vit = self.vit_model
        x = vit.patch_embed(image)  # [B, h, w, C] (timm's dynamic-size NHWC output)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        pos = self._pos_embed((h, w))
        x = torch.cat([self.query_embed.expand(b, -1, -1), x], dim=1) + pos
        x = vit.norm_pre(x)
        x = self._fuse(0, x, clip_features, (h, w))
        outs = []
        last = len(vit.blocks)
        for i, block in enumerate(vit.blocks, start=1):
            x = self._fuse(i, block(x), clip_features, (h, w))
            if i in self.deep_supervision_idxs:
                q = x[:, : self.num_queries]
                v = x[:, self.num_queries :].transpose(1, 2).reshape(b, c, h, w)
                outs.append((q, v))
            if i < last:
                x = x + pos
        return outs

    def _fuse(self, block: int, x: torch.Tensor, clip_features, grid) -> torch.Tensor:
        src = self.fusion_map.get(block)
        if src is None:
            return x
        q = self.num_queries
        fused = self.fusion_layers[f"layer_{block}"](x[:, q:], clip_features[src], grid)
        return torch.cat([x[:, :q], fused], dim=1)
