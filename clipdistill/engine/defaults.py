"""``setup(args)``: the config of a training or evaluation run, as detectron2's ``default_setup``
prepares it (``tools/train_net.py``)."""

import os

from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_clipdistill_cfg, validate_config
from ..utils.io import ensure_writable_dir, storage_error_of

__all__ = ["setup"]


def setup(args) -> CfgNode:
    """``default_argument_parser`` args -> frozen, validated cfg, with detectron2's
    ``default_setup``. Training keys are checked too unless ``args.eval_only``; ``OUTPUT_DIR``
    must be writable."""
    cfg = get_clipdistill_cfg(args.config_file, args.opts, validate=False)
    validate_config(
        cfg, training=not getattr(args, "eval_only", False), world_size=comm.get_world_size()
    )
    cfg.freeze()
    if comm.is_main_process():
        ensure_writable_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    try:
        default_setup(cfg, args)  # writes OUTPUT_DIR/config.yaml
    except OSError as e:
        error = storage_error_of(e, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
        if error is None:
            raise
        raise error from e
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="clipdistill")
    return cfg
