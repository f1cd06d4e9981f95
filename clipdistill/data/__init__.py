"""Data: dataset registration (on import), mappers, the generated testbed world (synthetic/)."""
from . import datasets  # noqa: F401  (registers datasets)
from .dataset_mappers import SemSegDatasetMapper, read_sem_seg_label

__all__ = ["SemSegDatasetMapper", "read_sem_seg_label"]
