"""Loading a config: detectron2's defaults, every architecture's keys, a file, overrides, checks.

The one way every tool (train_net, demo, benchmark...) and every nested config (a segmenter
teacher's) is read: ``get_clipdistill_cfg(config_file, opts)``.
"""

import logging
import os

import torch

from detectron2.config import CfgNode, get_cfg

from ..utils.errors import ConfigError, ConfigKeyError
from .validate import validate_config

__all__ = ["get_clipdistill_cfg"]


def _yacs_message(e: Exception) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    if msg.startswith("Non-existent key"):
        msg = "unknown config key " + msg.split(":", 1)[1].strip()
    return msg


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file} does not exist")
    try:
        cfg.merge_from_file(config_file)
    except (AssertionError, KeyError) as e:  # yacs reports unknown keys with assert
        raise ConfigKeyError(f"{config_file}: {_yacs_message(e)}") from e
    except OSError as e:  # a missing _BASE_ file, an unreadable file
        raise ConfigError(f"{config_file}: {e}") from e
    except Exception as e:  # YAML syntax, a non-mapping document, a value of the wrong type
        raise ConfigError(f"{config_file}: not a valid config ({type(e).__name__}: {e})") from e


def _merge_list(cfg: CfgNode, opts) -> None:
    opts = list(opts)
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
    if config_file:
        _merge_file(cfg, config_file)
    _merge_list(cfg, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("No CUDA device: MODEL.DEVICE cuda -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if validate:
        validate_config(cfg)
    return cfg
