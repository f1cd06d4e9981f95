from .semantic_mapper import SemSegDatasetMapper, build_sem_seg_augmentation, read_sem_seg_label

__all__ = ["SemSegDatasetMapper", "build_sem_seg_augmentation", "read_sem_seg_label"]
