"""Teacher-output cache, the reading side: run the frozen CLIP teacher once per dataset, train
from disk.

``clipdistill.engine.teacher_cache.build_teacher_cache`` (``tools/cache_teacher.py``) writes
float16 safetensors shards of the teacher's global embedding and dense features;
``open_teacher_caches`` validates them against the config (stale or damaged caches are named);
``SemSegDatasetMapper`` warps the cached dense map with the image's augmentation
(``sample_dense``). Format and semantics: ``docs/CACHE.md``.
"""

from .geometry import dense_grid_size, sample_dense, transforms_to_affine
from .store import (
    DamagedShardError,
    StaleTeacherCacheError,
    TeacherCache,
    TeacherCacheError,
    TeacherCacheSet,
    cache_key,
    dataset_cache_dir,
    image_key,
    open_teacher_caches,
)

__all__ = [
    "dense_grid_size",
    "sample_dense",
    "transforms_to_affine",
    "DamagedShardError",
    "StaleTeacherCacheError",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherCacheSet",
    "cache_key",
    "dataset_cache_dir",
    "image_key",
    "open_teacher_caches",
]
