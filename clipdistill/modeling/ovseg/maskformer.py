"""OVSeg's class-agnostic proposal generator: MaskFormer (v1) pixel decoder and transformer
decoder, whose query embeddings are projected into the CLIP text space.

* :class:`BasePixelDecoder`: MaskFormer's FPN (GroupNorm, no deformable attention): top-down
  lateral 1x1 convolutions (``adapter_i``) and 3x3 output convolutions (``layer_i``), then a 3x3
  ``mask_features`` convolution at stride 4.
* :class:`TransformerDecoder`: DETR's post-norm decoder (no encoder): learned queries attend to
  the sine-encoded ``res5`` features; every layer's normalised output is returned (deep
  supervision).
* :class:`OpenVocabPredictor`: the decoder plus two MLPs per query: ``class_embed`` into the CLIP
  text space (classified against text embeddings by the meta-architecture) and ``mask_embed``
  (dot product with the per-pixel mask features gives the mask logits).
* :class:`OVSegHead`: pixel decoder + predictor (``sem_seg_head`` in OVSeg checkpoints).

Parameter names follow OVSeg's checkpoints.
"""

import copy
import math
from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm

from ..layers import MLP

__all__ = [
    "BasePixelDecoder",
    "PositionEmbeddingSine",
    "TransformerDecoder",
    "OpenVocabPredictor",
    "OVSegHead",
]


class BasePixelDecoder(nn.Module):
    """FPN over ``input_shape`` (sorted by stride) returning stride-4 mask features.

    Args:
        input_shape: ``{name: ShapeSpec}`` of the backbone features used.
        conv_dim: channels of the FPN convolutions.
        mask_dim: channels of the mask features.
        norm: detectron2 norm name (``"GN"`` in OVSeg); ``""`` gives biased convolutions.
    """

    def __init__(
        self, input_shape: Dict[str, ShapeSpec], *, conv_dim: int, mask_dim: int, norm: str
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]
        use_bias = norm == ""
        lateral, output = [], []

        def output_conv(c_in: int) -> Conv2d:
            return Conv2d(
                c_in,
                conv_dim,
                3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )

        for idx, (_, spec) in enumerate(shapes):
            if idx == len(shapes) - 1:
                out = output_conv(spec.channels)
                weight_init.c2_xavier_fill(out)
                self.add_module(f"layer_{idx + 1}", out)
                lateral.append(None)
            else:
                lat = Conv2d(
                    spec.channels, conv_dim, 1, bias=use_bias, norm=get_norm(norm, conv_dim)
                )
                out = output_conv(conv_dim)
                weight_init.c2_xavier_fill(lat)  # the order of the official code (random state)
                weight_init.c2_xavier_fill(out)
                self.add_module(f"adapter_{idx + 1}", lat)
                self.add_module(f"layer_{idx + 1}", out)
                lateral.append(lat)
            output.append(out)
        # top-down order (coarsest first); plain lists, the modules are registered above
        self.lateral_convs = lateral[::-1]
        self.output_convs = output[::-1]
        self.mask_features = Conv2d(conv_dim, mask_dim, 3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        y = None
        for name, lat, out in zip(self.in_features[::-1], self.lateral_convs, self.output_convs):
            x = features[name]
            if lat is None:
                y = out(x)
            else:
                cur = lat(x)
                y = out(cur + F.interpolate(y, size=cur.shape[-2:], mode="nearest"))
        return self.mask_features(y)


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine position encoding of a ``[B, C, H, W]`` map (no padding mask)."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        ones = torch.ones((B, H, W), device=x.device, dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class DecoderLayer(nn.Module):
    """DETR decoder layer, post-norm: self-attention, cross-attention, FFN (ReLU)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        attn = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class TransformerDecoder(nn.Module):
    """``num_layers`` decoder layers and a shared final LayerNorm (``norm``); returns the normed
    output of every layer, ``[L, B, Q, C]``."""

    def __init__(
        self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int, dropout: float
    ):
        super().__init__()
        layer = DecoderLayer(d_model, nhead, dim_feedforward, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, pos, query_embed):
        """src, pos: ``[B, C, H, W]``; query_embed: ``[Q, C]``."""
        B = src.shape[0]
        memory = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, B, 1)
        out = torch.zeros_like(query_pos)
        hs = []
        for layer in self.layers:
            out = layer(out, memory, pos, query_pos)
            hs.append(self.norm(out))
        return torch.stack(hs).transpose(1, 2)


class _DecoderHolder(nn.Module):
    """Holds the decoder as ``transformer.decoder`` (the checkpoint layout of DETR/MaskFormer)."""

    def __init__(self, decoder: TransformerDecoder):
        super().__init__()
        self.decoder = decoder


class OpenVocabPredictor(nn.Module):
    """Transformer decoder over one backbone feature; per query a CLIP-space embedding
    (``pred_logits``: the meta-architecture turns it into class logits) and mask logits.

    Args:
        in_channels: channels of the decoder's input feature (``res5``).
        embedding_dim: CLIP joint-space width (768 for ViT-L/14, 512 for ViT-B/16).
        embed_hidden_dim, embed_layers: the ``class_embed`` MLP.
        hidden_dim, num_queries, nheads, dropout, dim_feedforward, dec_layers: the decoder.
        deep_supervision: also return every intermediate layer's outputs (``aux_outputs``).
        mask_dim: channels of the pixel decoder's mask features.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        embedding_dim: int,
        embed_hidden_dim: int,
        embed_layers: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dropout: float,
        dim_feedforward: int,
        dec_layers: int,
        deep_supervision: bool,
        mask_dim: int,
    ):
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.transformer = _DecoderHolder(
            TransformerDecoder(hidden_dim, nheads, dec_layers, dim_feedforward, dropout)
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
            weight_init.c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Sequential()
        self.deep_supervision = deep_supervision
        self.class_embed = MLP(hidden_dim, embed_hidden_dim, embedding_dim, embed_layers)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> Dict:
        hs = self.transformer.decoder(self.input_proj(x), self.pe_layer(x), self.query_embed.weight)
        if not self.deep_supervision:
            hs = hs[-1:]
        emb = self.class_embed(hs)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
        out = {"pred_logits": emb[-1], "pred_masks": masks[-1]}
        if self.deep_supervision:
            out["aux_outputs"] = [
                {"pred_logits": e, "pred_masks": m} for e, m in zip(emb[:-1], masks[:-1])
            ]
        return out


class OVSegHead(nn.Module):
    """``sem_seg_head``: pixel decoder + predictor. Returns the predictor's dict, where
    ``pred_logits`` holds CLIP-space query embeddings ``[B, Q, E]`` (not yet classified)."""

    def __init__(
        self,
        pixel_decoder: BasePixelDecoder,
        predictor: OpenVocabPredictor,
        transformer_in_feature: str,
    ):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.transformer_in_feature = transformer_in_feature

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict:
        return self.predictor(features[self.transformer_in_feature], self.pixel_decoder(features))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> "OVSegHead":
        """Build from ``MODEL.SEM_SEG_HEAD`` / ``MODEL.MASK_FORMER`` (see ``add_ovseg_config``)."""
        head = cfg.MODEL.SEM_SEG_HEAD
        mf = cfg.MODEL.MASK_FORMER
        missing = [
            f for f in list(head.IN_FEATURES) + [mf.TRANSFORMER_IN_FEATURE] if f not in input_shape
        ]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES / MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE name "
                f"{missing}, which the backbone does not output (it gives {sorted(input_shape)})"
            )
        pixel_decoder = BasePixelDecoder(
            {k: input_shape[k] for k in head.IN_FEATURES},
            conv_dim=head.CONVS_DIM,
            mask_dim=head.MASK_DIM,
            norm=head.NORM,
        )
        predictor = OpenVocabPredictor(
            input_shape[mf.TRANSFORMER_IN_FEATURE].channels,
            embedding_dim=head.EMBEDDING_DIM,
            embed_hidden_dim=head.EMBED_HIDDEN_DIM,
            embed_layers=head.EMBED_LAYERS,
            hidden_dim=mf.HIDDEN_DIM,
            num_queries=mf.NUM_OBJECT_QUERIES,
            nheads=mf.NHEADS,
            dropout=mf.DROPOUT,
            dim_feedforward=mf.DIM_FEEDFORWARD,
            dec_layers=mf.DEC_LAYERS,
            deep_supervision=mf.DEEP_SUPERVISION,
            mask_dim=head.MASK_DIM,
        )
        return cls(pixel_decoder, predictor, mf.TRANSFORMER_IN_FEATURE)


def legacy_head_keys(keys: Sequence[str], prefix: str = "sem_seg_head.") -> Dict[str, str]:
    """``{old: new}`` for keys of the pre-version-2 MaskFormer head layout, where the pixel
    decoder's parameters sat directly under ``sem_seg_head.`` (e.g. ``sem_seg_head.adapter_1``)."""
    out = {}
    for k in keys:
        if k.startswith(prefix):
            rest = k[len(prefix) :]
            if not rest.startswith(("predictor.", "pixel_decoder.")):
                out[k] = prefix + "pixel_decoder." + rest
    return out
