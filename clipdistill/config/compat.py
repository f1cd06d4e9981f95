"""Renamed config keys: configs written with an earlier spelling keep loading, converted with a
warning that names the new key (``get_clipdistill_cfg`` applies it to every config file, its
``_BASE_`` files and the command-line overrides).

* ``RENAMED_KEYS``: one key, new name (SAN's CLIP now spelled as every architecture's:
  ``MODEL.SAN.CLIP.NAME``, ``.WEIGHTS``, ``.TEMPLATES``).
* MaskCLIP's CLIP moved from ``MODEL.CLIPDISTILL.TEACHER`` (the student's teacher) to
  ``MODEL.MASKCLIP.CLIP``: a ``MaskCLIP`` config that sets the former and none of the latter (as
  every MaskCLIP config did) gets the former's values (``upgrade_maskclip_clip``).
"""

import logging
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "RENAMED_KEYS",
    "MASKCLIP_CLIP_KEYS",
    "rename_keys",
    "rename_opts",
    "upgrade_maskclip_clip",
]

logger = logging.getLogger(__name__)

#: old dotted key -> new dotted key
RENAMED_KEYS: Dict[str, str] = {
    "MODEL.SAN.CLIP_MODEL_NAME": "MODEL.SAN.CLIP.NAME",
    "MODEL.SAN.CLIP_PRETRAINED_NAME": "MODEL.SAN.CLIP.WEIGHTS",
    "MODEL.SAN.CLIP_TEMPLATE_SET": "MODEL.SAN.CLIP.TEMPLATES",
}

#: the keys of ``MODEL.MASKCLIP.CLIP`` that MaskCLIP configs used to set under
#: ``MODEL.CLIPDISTILL.TEACHER``
MASKCLIP_CLIP_KEYS: Tuple[str, ...] = ("NAME", "WEIGHTS", "TEMPLATES", "DENSE_METHOD")


def _warn(old: str, new: str, where: str) -> None:
    logger.warning(f"{where}: config key {old} is now {new}; converted (rename it in the config)")


def rename_keys(tree: dict, where: str) -> dict:
    """``tree`` (a config file's mapping, before its ``_BASE_`` is merged) with every key of
    ``RENAMED_KEYS`` moved to its new name, in place. A file that sets both spellings of a key
    keeps the new one."""
    for old, new in RENAMED_KEYS.items():
        *old_path, old_leaf = old.split(".")
        parent = tree
        for part in old_path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        *new_path, new_leaf = new.split(".")
        node = tree
        for part in new_path:
            node = node.setdefault(part, {})
        if new_leaf in node:
            logger.warning(f"{where}: {old} and {new} both set; {old} is ignored")
            continue
        node[new_leaf] = value
        _warn(old, new, where)
    return tree


def rename_opts(opts: Sequence[str], where: str = "command line") -> List[str]:
    """``KEY VALUE`` overrides with renamed keys spelled the new way."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        new = RENAMED_KEYS.get(out[i])
        if new is not None:
            _warn(out[i], new, where)
            out[i] = new
    return out


def upgrade_maskclip_clip(cfg, defaults) -> None:
    """In place: a ``MaskCLIP`` config whose ``MODEL.MASKCLIP.CLIP`` is all defaults but whose
    ``MODEL.CLIPDISTILL.TEACHER`` sets its CLIP (the layout before MaskCLIP had its own keys) is
    given those values, with a warning. ``defaults``: the config before any file or override."""
    if cfg.MODEL.META_ARCHITECTURE != "MaskCLIP":
        return
    clip, teacher = cfg.MODEL.MASKCLIP.CLIP, cfg.MODEL.CLIPDISTILL.TEACHER
    default_clip, default_teacher = defaults.MODEL.MASKCLIP.CLIP, defaults.MODEL.CLIPDISTILL.TEACHER
    if any(clip[k] != default_clip[k] for k in clip):
        return
    moved = [k for k in MASKCLIP_CLIP_KEYS if teacher[k] != default_teacher[k]]
    if not moved:
        return
    for k in moved:
        clip[k] = teacher[k]
    logger.warning(
        "MaskCLIP reads its CLIP from MODEL.MASKCLIP.CLIP; this config sets it under "
        f"MODEL.CLIPDISTILL.TEACHER ({', '.join(f'{k}={teacher[k]!r}' for k in moved)}), which is "
        "used: rename those keys to MODEL.MASKCLIP.CLIP.*"
    )
