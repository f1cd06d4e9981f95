from .checkpoint import StudentCheckpointer
from .setup import setup
from .trainer import Trainer, create_ddp_model

__all__ = ["StudentCheckpointer", "Trainer", "create_ddp_model", "setup"]
