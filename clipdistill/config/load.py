"""Loading a config: detectron2's defaults, every architecture's keys, a file, overrides, checks.

The one way every tool (train_net, demo, benchmark...) and every nested config (a segmenter
teacher's) is read: ``get_clipdistill_cfg(config_file, opts)``. Files are read as detectron2's
``merge_from_file`` reads them (``_BASE_`` inheritance, relative to the file), but with safe YAML
only (a Python tag, which could run code, is an error), with keys renamed since they were written
converted file by file (``compat``).
"""

import logging
import os

import torch
import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.file_io import PathManager

from ..utils.errors import ConfigError, ConfigKeyError
from .compat import rename_keys, rename_opts, upgrade_maskclip_clip
from .validate import validate_config

_BASE_KEY = "_BASE_"

__all__ = ["get_clipdistill_cfg"]


def _yacs_message(e: Exception) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    if msg.startswith("Non-existent key"):
        msg = "unknown config key " + msg.split(":", 1)[1].strip()
    return msg


def _read_yaml(path: str) -> dict:
    """One YAML file as a mapping, read with safe YAML: a Python tag (``!!python/...``, which
    detectron2's ``merge_from_file`` would execute) is a ``ConfigError`` naming the file."""
    with PathManager.open(path, "r") as f:
        text = f.read()
    try:
        tree = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        where = f" (line {e.problem_mark.line + 1})" if e.problem_mark else ""
        raise ConfigError(
            f"{path}{where}: {e.problem}; configs are read with safe YAML (a Python tag could run "
            "code): write the value as a plain YAML scalar, list or mapping"
        ) from e
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise TypeError(f"the document is a {type(tree).__name__}, not a mapping of keys")
    return tree


def _update(tree: dict, base: dict) -> None:
    """Merge ``tree`` into ``base`` in place: ``tree``'s values win, sub-mappings merge."""
    for key, value in tree.items():
        if isinstance(value, dict) and key in base:
            if not isinstance(base[key], dict):
                raise TypeError(f"cannot inherit key {key!r} from a _BASE_ file: not a mapping")
            _update(value, base[key])
        else:
            base[key] = value


def load_yaml_with_base(path: str) -> dict:
    """A config file and its ``_BASE_`` files (one or a list; paths relative to the file that
    names them, ``~`` expanded) as one mapping, each file's renamed keys converted before it is
    merged over its base."""
    tree = rename_keys(_read_yaml(path), path)
    bases = tree.pop(_BASE_KEY, None)
    if bases is None:
        return tree
    merged: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(path), base)
        _update(load_yaml_with_base(base), merged)
    _update(tree, merged)
    return merged


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file} does not exist")
    try:
        loaded = type(cfg)(load_yaml_with_base(config_file))
        if loaded.get("VERSION", cfg.VERSION) != cfg.VERSION:
            # detectron2 upgrades configs of its old versions (the file is safe YAML, checked)
            cfg.merge_from_file(config_file, allow_unsafe=False)
        else:
            cfg.merge_from_other_cfg(loaded)
    except ConfigError:
        raise
    except (AssertionError, KeyError) as e:  # yacs reports unknown keys with assert
        raise ConfigKeyError(f"{config_file}: {_yacs_message(e)}") from e
    except OSError as e:  # a missing _BASE_ file, an unreadable file
        raise ConfigError(f"{config_file}: {e}") from e
    except Exception as e:  # YAML syntax, a non-mapping document, a value of the wrong type
        raise ConfigError(f"{config_file}: not a valid config ({type(e).__name__}: {e})") from e


def _merge_list(cfg: CfgNode, opts) -> None:
    opts = rename_opts(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides must be KEY VALUE pairs; the last one, {opts[-1]!r}, has no value "
            f"({len(opts)} items)"
        )
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (AssertionError, KeyError) as e:
            raise ConfigKeyError(f"command-line override {key} {value}: {_yacs_message(e)}") from e
        except Exception as e:  # type mismatch, a value that does not parse
            raise ConfigError(f"command-line override {key} {value}: {_yacs_message(e)}") from e


def get_clipdistill_cfg(config_file: str = "", opts=(), validate: bool = True) -> CfgNode:
    """detectron2 defaults + clipdistill keys + ``config_file`` + ``opts``, validated
    (``clipdistill.config.validate``). An unknown key, a value of the wrong type or a value that
    cannot work is a ``ConfigError`` naming the key. ``MODEL.DEVICE: cuda`` falls back to ``cpu``
    without a GPU (logged)."""
    from . import add_clipdistill_config

    cfg = get_cfg()
    add_clipdistill_config(cfg)
    defaults = cfg.clone()
    if config_file:
        _merge_file(cfg, config_file)
    _merge_list(cfg, opts)
    upgrade_maskclip_clip(cfg, defaults)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("No CUDA device: MODEL.DEVICE cuda -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if validate:
        validate_config(cfg)
    return cfg
