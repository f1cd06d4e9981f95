"""Importing this package registers every dataset (root: ``$DETECTRON2_DATASETS``)."""
from . import register_voc  # noqa: F401

__all__ = []
