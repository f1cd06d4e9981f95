"""Config set-up shared by every tool (train_net, demo, benchmark...)."""
import logging

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_clipdistill_config

__all__ = ["get_clipdistill_cfg", "setup"]


def get_clipdistill_cfg(config_file: str = "", opts=()) -> CfgNode:
    """detectron2 defaults + clipdistill keys + ``config_file`` + ``opts``; an unknown key is an
    error naming the key. ``MODEL.DEVICE: cuda`` falls back to ``cpu`` without a GPU (logged)."""
    cfg = get_cfg()
    add_clipdistill_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
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
