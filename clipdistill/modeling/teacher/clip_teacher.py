"""The frozen CLIP teacher of clipdistill, built on open_clip.

``CLIPTeacher`` is a thin frozen wrapper over the shared CLIP layer (``clipdistill.modeling.clip``)
that gives the three things the distillation needs (docs/METHOD.md):

* ``encode_image``: ``Cg``, CLIP's embedding of the whole image (the class-token path);
* ``encode_image_dense``: ``Td``, dense patch features in the joint space (the MaskCLIP route);
* ``encode_text``: ``Tk``, prompt-ensembled text embeddings of class names, cached in memory and on
  disk.

All outputs are float32 and L2-normalised along the embedding dimension. The module is frozen: no
parameter requires a gradient, it stays in eval mode whatever ``train()`` says, every ``encode_*``
runs under ``torch.no_grad()``, and it contributes nothing to its parent's ``state_dict()``.
"""

import logging
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import Attention as OpenClipAttention
from open_clip.transformer import VisionTransformer
from torch import nn

from ..clip.loader import MODEL_CONFIG_DIR, TOY_MODEL_NAME, load_open_clip
from ..clip.text import PROMPT_TEMPLATES, TextEncoder, check_class_names
from .frozen import FrozenAuxiliary

__all__ = [
    "CLIPTeacher",
    "build_clip_teacher",
    "check_class_names",
    "PROMPT_TEMPLATES",
    "MODEL_CONFIG_DIR",
    "TOY_MODEL_NAME",
]

logger = logging.getLogger(__name__)

_KEY_NAME = "MODEL.CLIPDISTILL.TEACHER.NAME"
_KEY_WEIGHTS = "MODEL.CLIPDISTILL.TEACHER.WEIGHTS"
_KEY_TEMPLATES = "MODEL.CLIPDISTILL.TEACHER.TEMPLATES"
_KEY_IMAGE_SIZE = "MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE"
_KEY_DENSE_IMAGE_SIZE = "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE"


# --------------------------------------------------------------------------------------------
# the teacher
# --------------------------------------------------------------------------------------------
class CLIPTeacher(FrozenAuxiliary):
    """Frozen CLIP (open_clip) teacher: global, dense and text embeddings in the joint space.

    Images are float tensors ``[B, 3, H, W]`` in 0..255 RGB (detectron2's convention); the teacher
    normalises them with the CLIP model's own mean/std and resizes them itself.

    The teacher is an auxiliary module of the student: it is frozen, stays in eval mode, and is
    left out of the parent's ``state_dict()`` (it is rebuilt from ``MODEL.CLIPDISTILL.TEACHER``
    whenever the student is built, so storing hundreds of MB of CLIP weights in every student
    checkpoint would be wasted space, and loading a student checkpoint must never overwrite the
    teacher). Use ``teacher.model.state_dict()`` to get the CLIP weights themselves.
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        weights: str,
        image_size: int = 224,
        dense_image_size: int = 448,
        templates: str = "openai",
        text_cache_dir: str = "",
    ):
        """
        Args:
            model_name: open_clip architecture, e.g. "ViT-B-16" (``open_clip.list_models()``).
            weights: open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), a local weights
                file, or "" for a (deterministically seeded) random initialisation.
            image_size: square input side of ``encode_image``; for ViTs any multiple of the patch
                size works (positional embeddings are interpolated), other towers need their
                native size.
            dense_image_size: default square input side of ``encode_image_dense``.
            templates: prompt template set for ``encode_text``: "openai", "simple" or "single".
            text_cache_dir: directory of the on-disk text-embedding cache; "" means
                ``$XDG_CACHE_HOME/clipdistill/text_embeddings`` (``~/.cache`` by default).
        """
        super().__init__()
        if templates not in PROMPT_TEMPLATES:
            raise ValueError(
                f"{_KEY_TEMPLATES}={templates!r} is not a prompt template set; choose one of "
                f"{sorted(PROMPT_TEMPLATES)}."
            )
        for key, value in (
            (_KEY_IMAGE_SIZE, image_size),
            (_KEY_DENSE_IMAGE_SIZE, dense_image_size),
        ):
            if int(value) <= 0:
                raise ValueError(f"{key} must be a positive image side, got {value!r}.")

        self.model_name = model_name
        self.weights = weights
        self.templates = templates
        self.text_cache_dir = text_cache_dir

        model, identity = load_open_clip(
            model_name, weights, name_key=_KEY_NAME, weights_key=_KEY_WEIGHTS
        )
        model.requires_grad_(False)
        self.model = model
        #: ``weights_identity`` of the weights (the key of every cache of this teacher's outputs)
        self.weights_identity = identity

        visual = model.visual
        self._native_size = _to_2tuple(getattr(visual, "image_size", 224))
        # Normalisation constants of the CLIP model's own preprocessing (0..255 scale).
        mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, False
        )

        self._embed_dim = self._infer_embed_dim(model)
        self._patch_size = self._infer_patch_size(visual)
        self.image_size = self._check_side(int(image_size), _KEY_IMAGE_SIZE)
        self.dense_image_size = self._check_side(int(dense_image_size), _KEY_DENSE_IMAGE_SIZE)
        if not isinstance(visual, VisionTransformer) and (
            (self.image_size, self.image_size) != self._native_size
        ):
            raise ValueError(
                f"{_KEY_IMAGE_SIZE}={image_size} but {model_name!r} only works at its native size "
                f"{self._native_size} (positional-embedding interpolation is implemented for "
                "open_clip VisionTransformer towers only)."
            )

        self.text_encoder = TextEncoder(
            model,
            open_clip.get_tokenizer(model_name),
            model_name=model_name,
            identity=identity,
            templates=templates,
            cache_dir=text_cache_dir,
        )
        super().train(False)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        """Read ``MODEL.CLIPDISTILL.TEACHER.*``.

        Args:
            cfg: a detectron2 config extended by ``add_clipdistill_config``.

        Returns:
            The keyword arguments of ``__init__``.
        """
        t = cfg.MODEL.CLIPDISTILL.TEACHER
        return {
            "model_name": t.NAME,
            "weights": t.WEIGHTS,
            "image_size": t.IMAGE_SIZE,
            "dense_image_size": t.DENSE_IMAGE_SIZE,
            "templates": t.TEMPLATES,
            "text_cache_dir": t.TEXT_CACHE_DIR,
        }

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, weights={self.weights!r}, "
            f"image_size={self.image_size}, dense_image_size={self.dense_image_size}, "
            f"templates={self.templates!r}"
        )

    # ---- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the teacher (of its buffers and parameters)."""
        return self.pixel_mean.device

    @property
    def embed_dim(self) -> int:
        """Width C of the joint image-text embedding space."""
        return self._embed_dim

    @property
    def patch_size(self) -> int:
        """Stride of ``encode_image_dense``'s grid in input pixels (patch size, 32 for ResNets)."""
        if self._patch_size is None:
            raise NotImplementedError(
                f"Dense features are not implemented for the vision tower of {self.model_name!r} "
                f"({type(self.model.visual).__name__})."
            )
        return self._patch_size

    # ---- images ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global CLIP embedding ``Cg`` of whole images.

        Args:
            images: ``[B, 3, H, W]`` float RGB in 0..255; bilinearly resized to
                ``image_size x image_size`` (CLIP's native view of the whole image).

        Returns:
            ``[B, C]`` float32, L2-normalised.
        """
        size = (self.image_size, self.image_size)
        x = self._preprocess(images, size)
        visual = self.model.visual
        if size == self._native_size:
            feats = self.model.encode_image(x)
        else:  # a VisionTransformer (checked in __init__)
            tokens = self._vit_tokens(x)
            tokens = self._run_blocks(tokens, visual.transformer.resblocks)
            feats, _ = visual._pool(tokens)  # open_clip's own pooling (class token, ln_post)
            if visual.proj is not None:
                feats = feats @ visual.proj
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_image_dense(
        self, images: torch.Tensor, size: Optional[Union[int, Sequence[int]]] = None
    ) -> torch.Tensor:
        """Dense patch features ``Td`` in the joint space (MaskCLIP).

        ViT towers: the image goes through the patch embedding (positional embeddings bicubically
        interpolated to the grid of the input, class-token position kept) and all blocks but the
        last one unchanged. In the last block the query-key attention is dropped: every token
        takes its own value, ``x_v = out_proj(v_proj(ln_1(x)))`` (times the layer scale, if any).
        ``x_v`` is used directly, without the block's residual and MLP, followed by ``ln_post``
        and ``proj`` on the patch tokens; this is the value-only form (as in ClearCLIP), which
        keeps the features local. ResNet towers: ``c_proj(v_proj(.))`` of the attention pool at
        every location of ``layer4``'s output.

        Args:
            images: ``[B, 3, H, W]`` float RGB in 0..255.
            size: input side(s) the images are bilinearly resized to: None for
                ``dense_image_size`` (square), an int for a square, or ``(H, W)``. Each side is
                rounded to the nearest multiple of ``patch_size``.

        Returns:
            ``[B, C, h, w]`` float32, L2-normalised at every location, with ``h, w`` the input
            size divided by ``patch_size``.
        """
        patch = self.patch_size
        if size is None:
            size = self.dense_image_size
        hw = _to_2tuple(size)
        hw = tuple(max(patch, int(math.floor(s / patch + 0.5)) * patch) for s in hw)
        x = self._preprocess(images, hw)
        visual = self.model.visual
        if isinstance(visual, VisionTransformer):
            feats = self._vit_dense(x)
        elif isinstance(visual, ModifiedResNet):
            feats = self._resnet_dense(x)
        else:  # unreachable: patch_size raised already
            raise NotImplementedError(type(visual).__name__)
        return F.normalize(feats.float(), dim=1)

    def _preprocess(self, images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"CLIPTeacher expects images [B, 3, H, W] (RGB, 0..255), got {tuple(images.shape)}."
            )
        x = images.to(device=self.device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != tuple(size):
            down = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
        x = (x - self.pixel_mean) / self.pixel_std
        return x.to(self._param_dtype())

    def _param_dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    # ViT helpers
    def _positional_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The tower's positional embedding ``[1 + h*w, width]`` for a ``grid = (h, w)`` input."""
        visual = self.model.visual
        pos = visual.positional_embedding
        native = tuple(visual.grid_size)
        if tuple(grid) == native:
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        width = pos.shape[-1]
        patch_pos = patch_pos.reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), size=tuple(grid), mode="bicubic", align_corners=False
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)
        return torch.cat([cls_pos, patch_pos.to(pos.dtype)], dim=0)

    def _vit_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + (interpolated) positional embedding + ``ln_pre``."""
        visual = self.model.visual
        x = visual.conv1(x)  # [B, width, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, width]
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self._positional_embedding(grid).to(x.dtype)
        x = visual.patch_dropout(x)  # identity in eval mode
        return visual.ln_pre(x)

    def _run_blocks(self, x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
        """Run transformer ``blocks`` on batch-first tokens ``x``, honouring the stack's layout."""
        batch_first = getattr(self.model.visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x

    @staticmethod
    def _value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The attention branch of ``block`` with every token attending only to itself.

        Args:
            block: an open_clip ``ResidualAttentionBlock`` or ``CustomResidualAttentionBlock``.
            x: batch-first tokens ``[B, L, width]`` entering the block.

        Returns:
            ``ls_1(out_proj(v_proj(ln_1(x))))`` (plus the custom block's head scale, inner and
            post-attention norms), ``[B, L, width]``.
        """
        y = block.ln_1(x)
        attn = block.attn
        if isinstance(attn, nn.MultiheadAttention):
            e = attn.embed_dim
            if attn._qkv_same_embed_dim:
                w_v = attn.in_proj_weight[2 * e :]
            else:
                w_v = attn.v_proj_weight
            b_v = attn.in_proj_bias[2 * e :] if attn.in_proj_bias is not None else None
            out = attn.out_proj(F.linear(y, w_v, b_v))
        elif isinstance(attn, OpenClipAttention):
            e = y.shape[-1]
            b_v = attn.in_proj_bias[2 * e :] if attn.in_proj_bias is not None else None
            v = F.linear(y, attn.in_proj_weight[2 * e :], b_v)
            if attn.head_scale is not None:
                n, l, _ = v.shape
                v = v.view(n, l, attn.num_heads, -1) * attn.head_scale.view(1, 1, -1, 1)
                v = v.reshape(n, l, e)
            out = attn.out_proj(getattr(attn, "ln_inner", nn.Identity())(v))
            out = getattr(block, "ln_attn", nn.Identity())(out)
        else:
            raise NotImplementedError(
                f"MaskCLIP dense features: unsupported attention module {type(attn).__name__}."
            )
        return getattr(block, "ls_1", nn.Identity())(out)

    def _vit_dense(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError(
                f"Dense features are not implemented for {self.model_name!r} (attentional pooler)."
            )
        b = x.shape[0]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        blocks = visual.transformer.resblocks
        tokens = self._run_blocks(self._vit_tokens(x), blocks[:-1])
        tokens = self._value_path(blocks[-1], tokens)[:, 1:]  # drop the class token
        tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def _resnet_dense(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.stem(x)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # [B, 32*width, h, w]
        pool = visual.attnpool
        x = pool.c_proj(pool.v_proj(x.permute(0, 2, 3, 1)))
        return x.permute(0, 3, 1, 2)

    # ---- text -----------------------------------------------------------------------------------
    def encode_text(self, class_names: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled text embeddings ``Tk`` ``[K, C]`` (float32, L2-normalised, on the
        teacher's device) of class names, cached per vocabulary in memory and on disk
        (``TextEncoder``; a random teacher is never cached on disk).

        Raises:
            ValueError: empty list, empty names or duplicate names.
        """
        return self.text_encoder(class_names)

    # ---- construction helpers -------------------------------------------------------------------
    @staticmethod
    def _infer_embed_dim(model: nn.Module) -> int:
        dim = getattr(model.visual, "output_dim", None)
        if dim is None:
            proj = getattr(model, "text_projection", None)
            if isinstance(proj, nn.Linear):
                dim = proj.out_features
            elif proj is not None:
                dim = proj.shape[-1]
        if dim is None:
            raise NotImplementedError(f"Cannot tell the embedding width of {type(model).__name__}.")
        return int(dim)

    @staticmethod
    def _infer_patch_size(visual: nn.Module) -> Optional[int]:
        if isinstance(visual, VisionTransformer):
            ph, pw = _to_2tuple(visual.patch_size)
            if ph != pw:
                return None
            return int(ph)
        if isinstance(visual, ModifiedResNet):
            return 32
        return None

    def _check_side(self, side: int, key: str) -> int:
        if self._patch_size is not None and side % self._patch_size:
            raise ValueError(
                f"{key}={side} must be a multiple of the patch size {self._patch_size} of "
                f"{self.model_name!r}."
            )
        return side


def _to_2tuple(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"Expected an int or (H, W), got {size!r}.")
    return size  # type: ignore[return-value]


def build_clip_teacher(cfg) -> CLIPTeacher:
    """Build the frozen CLIP teacher from ``cfg.MODEL.CLIPDISTILL.TEACHER``.

    Args:
        cfg: a detectron2 config extended by ``add_clipdistill_config``.

    Returns:
        The ``CLIPTeacher``.
    """
    return CLIPTeacher(cfg)
