"""The frozen CLIP teacher of clipdistill, built on open_clip.

``CLIPTeacher`` gives the three things the distillation needs (see ``DESIGN.md``, "The method"):

* ``encode_image``: ``Cg``, CLIP's embedding of the whole image (the class-token path);
* ``encode_image_dense``: ``Td``, dense patch features in the joint space (the MaskCLIP route);
* ``encode_text``: ``Tk``, prompt-ensembled text embeddings of class names, cached in memory and on
  disk.

All outputs are float32 and L2-normalised along the embedding dimension. The module is frozen: no
parameter requires a gradient, it stays in eval mode whatever ``train()`` says, every ``encode_*``
runs under ``torch.no_grad()``, and it contributes nothing to its parent's ``state_dict()``.

Importing this module registers the toy architecture ``ViT-T-16-toy`` (``model_configs/``) with
open_clip, so that tests and the toy config can build a tiny random teacher without any download.
"""

import hashlib
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import Attention as OpenClipAttention
from open_clip.transformer import VisionTransformer
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

__all__ = [
    "CLIPTeacher",
    "build_clip_teacher",
    "PROMPT_TEMPLATES",
    "MODEL_CONFIG_DIR",
    "TOY_MODEL_NAME",
]

logger = logging.getLogger(__name__)

#: Folder of the extra open_clip architecture configs shipped with clipdistill.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
#: A tiny ViT CLIP (width 64, 2 layers per tower) for tests and the toy config; random init only.
TOY_MODEL_NAME = "ViT-T-16-toy"

_KEY_NAME = "MODEL.CLIPDISTILL.TEACHER.NAME"
_KEY_WEIGHTS = "MODEL.CLIPDISTILL.TEACHER.WEIGHTS"
_KEY_TEMPLATES = "MODEL.CLIPDISTILL.TEACHER.TEMPLATES"
_KEY_IMAGE_SIZE = "MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE"
_KEY_DENSE_IMAGE_SIZE = "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE"

_WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")
_SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")


def _register_model_configs() -> None:
    """Register ``model_configs/`` with open_clip (idempotent)."""
    if TOY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


_register_model_configs()


def _single_template(name: str) -> str:
    return f"a photo of a {name}."


#: Prompt template sets selectable with ``MODEL.CLIPDISTILL.TEACHER.TEMPLATES``; each template is a
#: callable mapping a class name to a prompt.
PROMPT_TEMPLATES: Dict[str, Tuple[Callable[[str], str], ...]] = {
    "openai": tuple(OPENAI_IMAGENET_TEMPLATES),  # the 80 prompts of the CLIP paper
    "simple": tuple(SIMPLE_IMAGENET_TEMPLATES),  # open_clip's 7-prompt subset
    "single": (_single_template,),
}


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def _looks_like_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.startswith("~")
        or weights.lower().endswith(_WEIGHT_FILE_SUFFIXES)
    )


def _how_to_fix(model_name: str, weights: str) -> str:
    """The advice appended to every weight-loading error."""
    pcfg = open_clip.get_pretrained_cfg(model_name, weights) if weights else {}
    where = "the open_clip weights of this model and tag"
    if pcfg.get("hf_hub"):
        repo = pcfg["hf_hub"].rstrip("/")
        where = f"`open_clip_pytorch_model.bin` from https://huggingface.co/{repo}"
    elif pcfg.get("url"):
        where = f"{pcfg['url']}"
    msg = (
        f"To fix it: on a machine with network access download {where}, copy the file here and "
        f"pass `{_KEY_WEIGHTS} /path/to/open_clip_pytorch_model.bin` (keeping {_KEY_NAME} "
        f"{model_name!r}); or pre-populate the Hugging Face cache ($HF_HOME) so that the tag "
        "resolves offline."
    )
    quick = f"{model_name}-quickgelu"
    if pcfg.get("quick_gelu") and quick in open_clip.list_models():
        msg += (
            f" These weights were trained with QuickGELU: when you pass them as a local file, set "
            f"{_KEY_NAME} {quick!r}."
        )
    return msg


def _create_open_clip_model(
    model_name: str, pretrained: Optional[str], force_quick_gelu: bool
) -> nn.Module:
    """Build an open_clip model on the CPU (kept separate so that tests can substitute it)."""
    if pretrained is None:
        # Random init (tests, toy config): seed it so that every process and every run builds the
        # same teacher, without touching the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(
                model_name, pretrained=None, force_quick_gelu=force_quick_gelu, device="cpu"
            )
    return open_clip.create_model(
        model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu, device="cpu"
    )


def _load_open_clip_model(model_name: str, weights: str) -> Tuple[nn.Module, Optional[str]]:
    """Create the open_clip model named ``model_name`` with ``weights``.

    Args:
        model_name: open_clip architecture name (``open_clip.list_models()``), or an open_clip
            ``hf-hub:``/``local-dir:`` identifier.
        weights: an open_clip pretrained tag, a path to a local weights file, or "" (random init).

    Returns:
        The model, and the absolute path of the weights file when ``weights`` is a local file
        (else None).

    Raises:
        ValueError: ``model_name`` is unknown to open_clip.
        FileNotFoundError: ``weights`` looks like a path but is not a file.
        RuntimeError: the weights could not be resolved or loaded (unknown tag, no network, ...).
    """
    if not model_name.startswith(_SCHEMA_PREFIXES) and model_name not in open_clip.list_models():
        known = open_clip.list_models()
        examples = [m for m in ("ViT-B-16", "ViT-B-32", "ViT-L-14", "RN50") if m in known]
        examples += [m for m in known if m not in examples][: 12 - len(examples)]
        raise ValueError(
            f"{_KEY_NAME}={model_name!r} is not an open_clip model name. Known names include "
            f"{examples} ... ({len(known)} in all, see open_clip.list_models()); "
            f"{TOY_MODEL_NAME!r} is clipdistill's tiny test model."
        )
    pretrained: Optional[str] = None
    weights_path: Optional[str] = None
    force_quick_gelu = False
    if weights and not model_name.startswith(_SCHEMA_PREFIXES):
        tag_cfg = open_clip.get_pretrained_cfg(model_name, weights)
        expanded = os.path.expanduser(weights)
        if tag_cfg:
            pretrained = weights
            # open_clip only warns when the tag was trained with QuickGELU and the architecture
            # config uses nn.GELU (e.g. ViT-B-16 + "openai"): build it with QuickGELU instead.
            force_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        elif os.path.isfile(expanded):
            pretrained = weights_path = os.path.abspath(expanded)
        elif _looks_like_path(weights):
            raise FileNotFoundError(
                f"{_KEY_WEIGHTS}={weights!r} (for {_KEY_NAME}={model_name!r}) looks like a path "
                f"but there is no such file. " + _how_to_fix(model_name, weights)
            )
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise RuntimeError(
                f"{_KEY_WEIGHTS}={weights!r} is neither an open_clip pretrained tag of "
                f"{_KEY_NAME}={model_name!r} (known tags: {tags}) nor an existing file. "
                + _how_to_fix(model_name, weights)
            )
    try:
        model = _create_open_clip_model(model_name, pretrained, force_quick_gelu)
    except Exception as e:  # network, missing cache, corrupt file, architecture mismatch, ...
        raise RuntimeError(
            f"Could not load the CLIP teacher {_KEY_NAME}={model_name!r} with "
            f"{_KEY_WEIGHTS}={weights!r}: {type(e).__name__}: {e}\n"
            + _how_to_fix(model_name, weights)
        ) from e
    return model, weights_path


def _load_open_clip_model_distributed(
    model_name: str, weights: str
) -> Tuple[nn.Module, Optional[str]]:
    """``_load_open_clip_model`` on local rank 0 first (it downloads), then on the other ranks."""
    if comm.get_world_size() == 1:
        return _load_open_clip_model(model_name, weights)
    result, error = None, None
    if comm.get_local_rank() == 0:
        try:
            result = _load_open_clip_model(model_name, weights)
        except Exception as e:  # re-raised after the barrier, so that no rank waits forever
            error = e
    comm.synchronize()
    if error is not None:
        raise error
    if result is None:
        result = _load_open_clip_model(model_name, weights)
    return result


# --------------------------------------------------------------------------------------------
# the teacher
# --------------------------------------------------------------------------------------------
class CLIPTeacher(nn.Module):
    """Frozen CLIP (open_clip) teacher: global, dense and text embeddings in the joint space.

    Images are float tensors ``[B, 3, H, W]`` in 0..255 RGB (detectron2's convention); the teacher
    normalises them with the CLIP model's own mean/std and resizes them itself.

    The teacher is an auxiliary module of the student: it is frozen, stays in eval mode, and is
    left out of the parent's ``state_dict()`` (it is rebuilt from ``MODEL.CLIPDISTILL.TEACHER``
    whenever the student is built, so storing hundreds of MB of CLIP weights in every student
    checkpoint would be wasted space, and loading a student checkpoint must never overwrite the
    teacher). Use ``teacher.model.state_dict()`` to get the CLIP weights themselves.
    """

    #: Number of prompts per text-encoder batch.
    TEXT_BATCH_SIZE = 256

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

        model, weights_path = _load_open_clip_model_distributed(model_name, weights)
        model.requires_grad_(False)
        self.model = model
        self._weights_identity = self._compute_weights_identity(weights, weights_path)

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

        self._tokenizer = None  # built on first use of encode_text
        self._text_cache: Dict[Tuple[str, ...], torch.Tensor] = {}
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

    # ---- frozen-module plumbing ---------------------------------------------------------------
    def train(self, mode: bool = True) -> "CLIPTeacher":
        """Keep the teacher in eval mode, whatever ``mode`` (e.g. when the student trains).

        Args:
            mode: ignored.

        Returns:
            self.
        """
        return super().train(False)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Contribute nothing to a state dict (see the class docstring for why).

        ``nn.Module.state_dict`` of the parent calls this with its ``destination``; it is
        returned untouched, so the parent's checkpoint holds no ``teacher.*`` keys.

        Args:
            *args: positional form of ``destination, prefix, keep_vars`` (deprecated by torch).
            destination: the dict being filled by the parent, or None.
            prefix: ignored.
            keep_vars: ignored.

        Returns:
            ``destination`` unchanged (a new empty OrderedDict when it is None).
        """
        if args and destination is None and isinstance(args[0], dict):
            destination = args[0]
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()
        return destination

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
    @torch.no_grad()
    def encode_text(self, class_names: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled text embeddings ``Tk`` of class names.

        Every name is put in each template of the configured set, the prompts are embedded and
        L2-normalised, averaged over the templates and re-normalised. Results are cached in memory
        (per teacher) and on disk (except for a randomly initialised teacher).

        Args:
            class_names: K distinct, non-empty class names (surrounding spaces are stripped).

        Returns:
            ``[K, C]`` float32 on the teacher's device, L2-normalised.

        Raises:
            ValueError: empty list, empty names or duplicate names.
        """
        names = check_class_names(class_names)
        key = tuple(names)
        emb = self._text_cache.get(key)
        if emb is None:
            path = self._text_cache_path(names)
            emb = self._read_text_cache(path, names) if path else None
            if emb is None:
                emb = self._compute_text_embeddings(names)
                if path:
                    self._write_text_cache(path, names, emb.cpu())
            # kept on the teacher's device: a cache hit costs a device-side copy, no transfer
            self._text_cache[key] = emb = emb.to(self.device)
        # a copy, so that callers cannot alter the cache in place
        return emb.to(device=self.device, dtype=torch.float32, copy=True)

    def _compute_text_embeddings(self, names: List[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        templates = PROMPT_TEMPLATES[self.templates]
        prompts = [template(name) for name in names for template in templates]
        feats = []
        for i in range(0, len(prompts), self.TEXT_BATCH_SIZE):
            tokens = self._tokenizer(prompts[i : i + self.TEXT_BATCH_SIZE]).to(self.device)
            feats.append(self.model.encode_text(tokens).float())
        feats = F.normalize(torch.cat(feats), dim=-1)
        feats = feats.view(len(names), len(templates), -1).mean(dim=1)
        return F.normalize(feats, dim=-1)

    @staticmethod
    def _compute_weights_identity(weights: str, weights_path: Optional[str]) -> Optional[str]:
        if not weights:
            return None  # random init: never cached on disk
        if weights_path is not None:
            st = os.stat(weights_path)
            return f"file:{weights_path}:{st.st_size}:{st.st_mtime_ns}"
        return f"tag:{weights}"

    def _text_cache_path(self, names: List[str]) -> Optional[str]:
        """The cache file of ``names``, or None when the disk cache is not used."""
        if self._weights_identity is None:
            return None
        directory = self.text_cache_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME", "~/.cache"), "clipdistill", "text_embeddings"
        )
        key = json.dumps(
            [
                self.model_name,
                self._weights_identity,
                self.templates,
                names,
                open_clip.__version__,
            ]
        )
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return os.path.join(os.path.expanduser(directory), f"{digest}.safetensors")

    def _read_text_cache(self, path: str, names: List[str]) -> Optional[torch.Tensor]:
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
            if json.loads(meta.get("names", "null")) != names:
                raise ValueError("class names in the file differ")
            if emb.dtype != torch.float32 or tuple(emb.shape) != (len(names), self.embed_dim):
                raise ValueError(f"unexpected tensor {emb.dtype} {tuple(emb.shape)}")
            if not torch.isfinite(emb).all():
                raise ValueError("non-finite values")
        except Exception as e:
            logger.warning(
                f"Ignoring the corrupt text-embedding cache file {path} ({type(e).__name__}: {e}); "
                "recomputing and overwriting it."
            )
            return None
        logger.debug(f"Text embeddings of {len(names)} names read from {path}.")
        return emb

    def _write_text_cache(self, path: str, names: List[str], emb: torch.Tensor) -> None:
        directory = os.path.dirname(path)
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
            os.close(fd)
            metadata = {
                "names": json.dumps(names),
                "model_name": self.model_name,
                "weights": self._weights_identity or "",
                "templates": self.templates,
                "open_clip": open_clip.__version__,
            }
            save_file({"embeddings": emb.contiguous()}, tmp, metadata=metadata)
            os.replace(tmp, path)  # atomic: concurrent processes never see a partial file
            tmp = None
        except OSError as e:
            logger.warning(f"Could not write the text-embedding cache {path}: {e}")
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)

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


def check_class_names(class_names: Sequence[str]) -> List[str]:
    """Strip class names and reject an empty list, empty names and duplicates.

    The one validation of a vocabulary (teacher, predictor, demo, web demo); its messages are
    meant for users.

    Raises:
        ValueError: naming the offending names.
    """
    if isinstance(class_names, str):
        raise ValueError(
            f"class_names must be a sequence of names, not the string {class_names!r}."
        )
    raw = [str(n) for n in class_names]
    if not raw:
        raise ValueError("no class names given: class_names is empty (give at least one name).")
    names = [n.strip() for n in raw]
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(
            f"empty class name at position {empty} "
            f"({[raw[i - 1] for i in empty]!r}); empty names are not allowed: {raw!r}"
        )
    seen, dups = set(), []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    if dups:
        raise ValueError(
            f"duplicated class names {dups!r}: each class must be unique (class_names has "
            f"duplicates after stripping: {raw!r})"
        )
    return names


def build_clip_teacher(cfg) -> CLIPTeacher:
    """Build the frozen CLIP teacher from ``cfg.MODEL.CLIPDISTILL.TEACHER``.

    Args:
        cfg: a detectron2 config extended by ``add_clipdistill_config``.

    Returns:
        The ``CLIPTeacher``.
    """
    return CLIPTeacher(cfg)
