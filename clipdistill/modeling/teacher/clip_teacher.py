"""The frozen CLIP teacher of clipdistill, built on open_clip.

``CLIPTeacher`` is a thin frozen wrapper over the shared CLIP layer (``clipdistill.modeling.clip``)
that gives the three things the distillation needs (docs/METHOD.md):

* ``encode_image``: ``Cg``, CLIP's embedding of the whole image (the class-token path);
* ``encode_image_dense``: ``Td``, dense patch features in the joint space (``DENSE_METHOD``:
  value-only MaskCLIP by default, or MaskCLIP, SCLIP, ClearCLIP, NACLIP);
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
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from timm.layers import to_2tuple
from torch import nn

from ...utils.errors import ConfigError
from ..clip import vit
from ..clip.dense import DENSE_METHODS, dense_features
from ..clip.loader import clip_pixel_stats, load_open_clip
from ..clip.text import PROMPT_TEMPLATES, TextEncoder
from .frozen import FrozenAuxiliary

__all__ = ["CLIPTeacher", "TEACHER_KEY"]

logger = logging.getLogger(__name__)

#: the config node of the student's teacher (errors name its keys)
TEACHER_KEY = "MODEL.CLIPDISTILL.TEACHER"
_KEYS = ("NAME", "WEIGHTS", "TEMPLATES", "DENSE_METHOD", "IMAGE_SIZE", "DENSE_IMAGE_SIZE")


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
        image_size: Optional[int] = 224,
        dense_image_size: Optional[int] = 448,
        templates: str = "openai",
        text_cache_dir: str = "",
        dense_method: str = "value_only",
        config_key: str = TEACHER_KEY,
    ):
        """
        Args:
            model_name: open_clip architecture, e.g. "ViT-B-16" (``open_clip.list_models()``).
            weights: open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), a local weights
                file, or "" for a (deterministically seeded) random initialisation.
            image_size: square input side of ``encode_image``; for ViTs any multiple of the patch
                size works (positional embeddings are interpolated), other towers need their
                native size; None: the native size.
            dense_image_size: default square input side of ``encode_image_dense``; None: the
                native size.
            templates: prompt template set for ``encode_text``: "openai", "simple" or "single".
            text_cache_dir: directory of the on-disk text-embedding cache; "" means
                ``$XDG_CACHE_HOME/clipdistill/text_embeddings`` (``~/.cache`` by default).
            dense_method: how ``encode_image_dense`` computes patch features, a name of
                ``clipdistill.modeling.clip.DENSE_METHODS`` ("value_only", "maskclip", "sclip",
                "clearclip", "naclip").
            config_key: the config node these arguments come from (named by every error).
        """
        super().__init__()
        keys = {k: f"{config_key}.{k}" for k in _KEYS}
        if dense_method not in DENSE_METHODS:
            raise ConfigError(
                f"{keys['DENSE_METHOD']}={dense_method!r} is not a dense method; choose one of "
                f"{sorted(DENSE_METHODS)}."
            )
        if templates not in PROMPT_TEMPLATES:
            raise ConfigError(
                f"{keys['TEMPLATES']}={templates!r} is not a prompt template set; choose one of "
                f"{sorted(PROMPT_TEMPLATES)}."
            )
        for name, value in (("IMAGE_SIZE", image_size), ("DENSE_IMAGE_SIZE", dense_image_size)):
            if value is not None and int(value) <= 0:
                raise ConfigError(f"{keys[name]} must be a positive image side, got {value!r}.")

        self.model_name = model_name
        self.weights = weights
        self.templates = templates
        self.text_cache_dir = text_cache_dir
        self.dense_method = dense_method

        model, identity = load_open_clip(
            model_name, weights, name_key=keys["NAME"], weights_key=keys["WEIGHTS"]
        )
        model.requires_grad_(False)
        self.model = model
        #: ``weights_identity`` of the weights (the key of every cache of this teacher's outputs)
        self.weights_identity = identity

        visual = vit.unwrap_tower(model.visual)
        self._native_size = to_2tuple(getattr(visual, "image_size", 224))
        # Normalisation constants of the CLIP model's own preprocessing (0..255 scale).
        mean, std = clip_pixel_stats(visual)
        self.register_buffer("pixel_mean", mean, False)
        self.register_buffer("pixel_std", std, False)

        self._embed_dim = self._infer_embed_dim(model)
        self._patch_size = self._infer_patch_size(visual)
        native = self._native_size[0]
        image_size = native if image_size is None else int(image_size)
        dense_image_size = native if dense_image_size is None else int(dense_image_size)
        self.image_size = self._check_side(image_size, keys["IMAGE_SIZE"])
        self.dense_image_size = self._check_side(dense_image_size, keys["DENSE_IMAGE_SIZE"])
        if not isinstance(visual, VisionTransformer) and (
            (self.image_size, self.image_size) != self._native_size
        ):
            raise ConfigError(
                f"{keys['IMAGE_SIZE']}={image_size} but {model_name!r} only works at its native "
                f"size "
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
            "dense_method": t.DENSE_METHOD,
        }

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, weights={self.weights!r}, "
            f"image_size={self.image_size}, dense_image_size={self.dense_image_size}, "
            f"templates={self.templates!r}, dense_method={self.dense_method!r}"
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
        visual = vit.unwrap_tower(self.model.visual)
        if size == self._native_size:
            feats = self.model.encode_image(x)
        else:  # a VisionTransformer (checked in __init__)
            tokens, _ = vit.vit_tokens(visual, x)
            tokens = vit.run_blocks(visual, tokens)
            feats, _ = visual._pool(tokens)  # open_clip's own pooling (class token, ln_post)
            if visual.proj is not None:
                feats = feats @ visual.proj
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_image_dense(
        self, images: torch.Tensor, size: Optional[Union[int, Sequence[int]]] = None
    ) -> torch.Tensor:
        """Dense patch features ``Td`` in the joint space, computed by ``DENSE_METHOD``.

        The images are resized to ``size`` and normalised, then go through
        ``clipdistill.modeling.clip.dense_features`` with the configured method. The default,
        ``value_only``, runs every block but the last one unchanged; in the last block every token
        takes its own value, ``out_proj(v_proj(ln_1(x)))``, without the block's residual and MLP,
        followed by ``ln_post`` and ``proj`` (positional embeddings resampled bicubically to the
        input's grid). ``maskclip`` is MaskCLIP's own form (residual and MLP kept); ``sclip``,
        ``clearclip`` and ``naclip`` change the last attention
        (``clipdistill.modeling.clip.dense``). ResNet towers: ``c_proj(v_proj(.))`` of the
        attention pool at every location of ``layer4``'s output (``value_only`` and ``maskclip``).

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
        hw = to_2tuple(size)
        hw = tuple(max(patch, int(math.floor(s / patch + 0.5)) * patch) for s in hw)
        x = self._preprocess(images, hw)
        feats = dense_features(self.model.visual, x, self.dense_method)
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
        if isinstance(visual, VisionTransformer) or hasattr(visual, "dense_embeddings"):
            ph, pw = to_2tuple(visual.patch_size)
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
