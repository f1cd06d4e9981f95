"""Config set-up shared by every tool (train_net, demo, benchmark...)."""

import logging
import os

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_clipdistill_config

__all__ = ["get_clipdistill_cfg", "setup"]


def _yacs_message(e: Exception) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    if msg.startswith("Non-existent key"):
        msg = "unknown config key " + msg.split(":", 1)[1].strip()
    return msg


def get_clipdistill_cfg(config_file: str = "", opts=()) -> CfgNode:
    """detectron2 defaults + clipdistill keys + ``config_file`` + ``opts``; an unknown key is an
    error naming the key. ``MODEL.DEVICE: cuda`` falls back to ``cpu`` without a GPU (logged)."""
    cfg = get_cfg()
    add_clipdistill_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file {config_file} does not exist")
        try:
            cfg.merge_from_file(config_file)
        except (AssertionError, KeyError) as e:  # yacs reports unknown keys with assert
            raise KeyError(f"{config_file}: {_yacs_message(e)}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise KeyError(f"command-line override {list(opts)}: {_yacs_message(e)}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("No CUDA device: MODEL.DEVICE cuda -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args) -> CfgNode:
    """``default_argument_parser`` args -> frozen cfg, with detectron2's ``default_setup``."""
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="clipdistill")
    return cfg
