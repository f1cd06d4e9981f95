"""Dataset preparation: convert official annotations into what the registered datasets read.

Each module holds the conversion logic of one benchmark; ``datasets/prepare_*.py`` are thin CLIs
around their ``main`` functions. See ``datasets/README.md`` for the expected trees.
"""

from .ade20k import prepare_ade20k_150, prepare_ade20k_full
from .coco_stuff import prepare_coco_stuff
from .common import PrepareError
from .pcontext import prepare_pcontext
from .voc import prepare_voc20
from .voc_aug import prepare_voc_aug

__all__ = [
    "PrepareError",
    "prepare_ade20k_150",
    "prepare_ade20k_full",
    "prepare_coco_stuff",
    "prepare_pcontext",
    "prepare_voc20",
    "prepare_voc_aug",
]
