"""Importing this package registers every dataset (root: ``$DETECTRON2_DATASETS``)."""

from . import register_ade20k  # noqa: F401
from . import register_coco_stuff  # noqa: F401
from . import register_pcontext  # noqa: F401
from . import register_pseudo_labels  # noqa: F401
from . import register_testbed  # noqa: F401
from . import register_voc  # noqa: F401
from . import register_voc_aug  # noqa: F401

__all__ = []
