"""Loading open_clip models: one loader for every architecture of clipdistill.

``load_open_clip(model_name, weights, name_key=..., weights_key=...)`` builds an open_clip model
from an open_clip pretrained tag, a local weights file or nothing (a seeded random initialisation),
on local rank 0 first (it may download), with errors that name the config keys a user must set.
It returns the ``weights_identity`` of the weights too (``clipdistill.utils.fingerprint``: the one
definition of what a weights setting *is*, used by every cache keyed by the weights).

Importing this module registers clipdistill's extra open_clip architecture (``model_configs/``):
the tiny ``ViT-T-16-toy`` used by the tests. Other folders of model configs are added with
``register_model_configs`` (the testbed's CLIPs: ``clipdistill.testbed``).
"""

import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from ...utils.distributed import local_rank_zero_first
from ...utils.errors import ConfigError, ResourceError
from ...utils.fingerprint import RANDOM_INIT_SEED, weights_identity

__all__ = [
    "load_open_clip",
    "register_model_configs",
    "MODEL_CONFIG_DIR",
    "TOY_MODEL_NAME",
    "clip_mean_std",
    "clip_pixel_stats",
]

logger = logging.getLogger(__name__)

#: Folder of the extra open_clip architecture configs shipped with clipdistill.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
#: A tiny ViT CLIP (width 64, 2 layers per tower) for tests; random init only.
TOY_MODEL_NAME = "ViT-T-16-toy"

_WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")
_SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")


def clip_mean_std(visual: nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` per RGB channel on the 0..1 scale: the normalisation of a CLIP image
    tower's own preprocessing (open_clip records it on the tower; OpenAI's constants if not)."""
    mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
    return tuple(mean), tuple(std)


def clip_pixel_stats(visual: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``clip_mean_std`` as ``[1, 3, 1, 1]`` float32 tensors on the 0..255 scale."""
    mean, std = clip_mean_std(visual)
    return (
        torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
        torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
    )


def register_model_configs(folder: Path) -> None:
    """Register the open_clip model configs (``*.json``) of ``folder`` (idempotent)."""
    known = set(open_clip.list_models())
    if any(p.stem not in known for p in Path(folder).glob("*.json")):
        open_clip.add_model_config(folder)


register_model_configs(MODEL_CONFIG_DIR)


# ------------------------------------------------------------------------------------ loading
def _looks_like_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.startswith("~")
        or weights.lower().endswith(_WEIGHT_FILE_SUFFIXES)
    )


def _how_to_fix(model_name: str, weights: str, name_key: str, weights_key: str) -> str:
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
        f"pass `{weights_key} /path/to/open_clip_pytorch_model.bin` (keeping {name_key} "
        f"{model_name!r}); or pre-populate the Hugging Face cache ($HF_HOME) so that the tag "
        "resolves offline."
    )
    quick = f"{model_name}-quickgelu"
    if pcfg.get("quick_gelu") and quick in open_clip.list_models():
        msg += (
            f" These weights were trained with QuickGELU: when you pass them as a local file, set "
            f"{name_key} {quick!r}."
        )
    return msg


def _create_open_clip_model(
    model_name: str, pretrained: Optional[str], force_quick_gelu: bool
) -> nn.Module:
    """Build an open_clip model on the CPU (kept separate so that tests can substitute it)."""
    if pretrained is None:
        # Random init: seeded so that every process and every run builds the same model,
        # without touching the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return open_clip.create_model(
                model_name, pretrained=None, force_quick_gelu=force_quick_gelu, device="cpu"
            )
    return open_clip.create_model(
        model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu, device="cpu"
    )


def _load(
    model_name: str, weights: str, name_key: str, weights_key: str, force_quick_gelu: Optional[bool]
) -> nn.Module:
    if not model_name.startswith(_SCHEMA_PREFIXES) and model_name not in open_clip.list_models():
        known = open_clip.list_models()
        examples = [m for m in ("ViT-B-16", "ViT-B-32", "ViT-L-14", "RN50") if m in known]
        examples += [m for m in known if m not in examples][: 12 - len(examples)]
        raise ConfigError(
            f"{name_key}={model_name!r} is not an open_clip model name. Known names include "
            f"{examples} ... ({len(known)} in all, see open_clip.list_models()); "
            f"{TOY_MODEL_NAME!r} is clipdistill's tiny test model."
        )
    pretrained: Optional[str] = None
    quick = bool(force_quick_gelu)
    if weights and not model_name.startswith(_SCHEMA_PREFIXES):
        tag_cfg = open_clip.get_pretrained_cfg(model_name, weights)
        expanded = os.path.expanduser(weights)
        if tag_cfg:
            pretrained = weights
            # open_clip only warns when the tag was trained with QuickGELU and the architecture
            # config uses nn.GELU (e.g. ViT-B-16 + "openai"): build it with QuickGELU instead.
            if force_quick_gelu is None:
                quick = bool(tag_cfg.get("quick_gelu", False))
        elif os.path.isfile(expanded):
            pretrained = os.path.abspath(expanded)
        elif _looks_like_path(weights):
            raise FileNotFoundError(
                f"{weights_key}={weights!r} (for {name_key}={model_name!r}) looks like a path "
                f"but there is no such file. "
                + _how_to_fix(model_name, weights, name_key, weights_key)
            )
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise ResourceError(
                f"{weights_key}={weights!r} is neither an open_clip pretrained tag of "
                f"{name_key}={model_name!r} (known tags: {tags}) nor an existing file. "
                + _how_to_fix(model_name, weights, name_key, weights_key)
            )
    try:
        return _create_open_clip_model(model_name, pretrained, quick)
    except Exception as e:  # network, missing cache, corrupt file, architecture mismatch, ...
        raise ResourceError(
            f"Could not load the CLIP model {name_key}={model_name!r} with "
            f"{weights_key}={weights!r}: {type(e).__name__}: {e}\n"
            + _how_to_fix(model_name, weights, name_key, weights_key)
        ) from e


def load_open_clip(
    model_name: str,
    weights: str,
    *,
    name_key: str,
    weights_key: str,
    force_quick_gelu: Optional[bool] = None,
) -> Tuple[nn.Module, str]:
    """Create the open_clip model ``model_name`` with ``weights``, on local rank 0 first.

    Args:
        model_name: open_clip architecture name (``open_clip.list_models()``), or an open_clip
            ``hf-hub:``/``local-dir:`` identifier.
        weights: an open_clip pretrained tag, a path to a local weights file, or "" (random init,
            seeded, the same in every process).
        name_key, weights_key: the config keys holding ``model_name`` and ``weights``; every error
            names them.
        force_quick_gelu: None: QuickGELU when the pretrained tag was trained with it (OpenAI
            weights); True/False: force it (needed for a local file of OpenAI weights, whose
            activation the file does not record).

    Returns:
        The model (CPU, float32, train mode as open_clip returns it) and its
        ``weights_identity``.

    Raises:
        ValueError: ``model_name`` is unknown to open_clip.
        FileNotFoundError: ``weights`` looks like a path but is not a file.
        RuntimeError: the weights could not be resolved or loaded (unknown tag, no network, ...).
    """
    args = (model_name, weights, name_key, weights_key, force_quick_gelu)
    model = local_rank_zero_first(lambda: _load(*args))
    return model, weights_identity(weights)
