from .semantic_mapper import SemSegDatasetMapper, read_sem_seg_label

__all__ = ["SemSegDatasetMapper", "read_sem_seg_label"]
