"""Dataset mapper for semantic segmentation with 8- and 16-bit label maps.

detectron2's default ``DatasetMapper`` reads labels in PIL mode "L" (8-bit), which corrupts the
16-bit TIFF labels of PC-459 and ADE-847. This mapper reads labels unchanged, checks them against
the image and the class list, and maps the dataset's ``ignore_label`` to the model's ignore value.
For a dataset with a seen/unseen split (``seen_classes``/``unseen_classes`` in its metadata), the
training labels are re-indexed into ``seen_classes`` and unseen pixels become ignored, so that no
unseen pixel ever reaches ``loss_ce``.
"""

import copy
import logging
from typing import List, Optional

import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform

from ...utils.errors import ConfigError, DataError

from ..datasets.common import training_class_names

__all__ = ["SemSegDatasetMapper", "build_sem_seg_augmentation", "read_sem_seg_label"]


def build_sem_seg_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """detectron2's ``build_augmentation`` (shortest-edge resize; flip in training) with
    ``INPUT.CROP`` applied after the resize in training, as semantic segmentation trains on crops
    of the resized image, and ``INPUT.COLOR_AUG_SSD`` (photometric distortion) after the crop.
    The one definition of the geometry, shared by the mapper and
    ``clipdistill.deploy.SegPredictor``."""
    augs = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        augs.insert(1, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if is_train and cfg.INPUT.COLOR_AUG_SSD:  # after the resize (and the crop)
        augs.insert(2 if cfg.INPUT.CROP.ENABLED else 1, ColorAugSSDTransform(cfg.INPUT.FORMAT))
    return augs


class UnreadableFileError(DataError, OSError):
    """An image or label file that is missing or cannot be decoded (names the file)."""


def read_sem_seg_label(path: str) -> np.ndarray:
    """Read a label map without any mode conversion (uint8 PNG or uint16 TIFF).

    Raises:
        UnreadableFileError (an ``OSError``): missing, truncated or not an image; names the file.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im).copy()
    except Exception as e:  # PIL raises several exception types for damaged files
        raise UnreadableFileError(f"Cannot read label map {path}: {e}") from e


class SemSegDatasetMapper:
    """Read one dataset dict, augment it, and produce the model's input dict.

    Output: ``"image"`` (uint8 ``Tensor[3, H, W]`` in ``image_format``), ``"sem_seg"``
    (``Tensor[int64] (H, W)`` with ignored pixels set to ``model_ignore_value``), plus every other
    key of the input dict (``file_name``, ``height``, ``width``, ``dataset_name``...).

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: Optional[int],
        ignore_label: int,
        model_ignore_value: int,
        teacher_cache=None,
        label_map: Optional[np.ndarray] = None,
    ):
        """
        Args:
            is_train (bool): training mode. At test time labels are still read and checked (the
                evaluator would silently mis-count bad values) but not returned: the evaluator
                re-reads them from disk.
            augmentations (list[Augmentation]): geometric augmentations applied to image and label.
            image_format (str): PIL image format, e.g. "RGB".
            num_classes (int or None): labels must lie in ``[0, num_classes)`` or equal
                ``ignore_label``; ``None`` skips the check.
            ignore_label (int): the dataset's ignore value (255, or 65535 for 16-bit labels).
            model_ignore_value (int): value the model uses for ignored pixels
                (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
            teacher_cache (TeacherCacheSet or None): training only; when given, every output
                also carries the cached teacher targets of its augmented image:
                ``"teacher_dense"`` (float16 ``[C, g, g]``, the cached dense map warped by the
                same resize/crop/flip as the image, see ``data.teacher_cache.sample_dense``)
                and ``"teacher_global"`` (float16 ``[C]``, per ``GLOBAL_TARGET``); the dense map
                only when needed (``loss_dense`` on, or ``GLOBAL_TARGET: crop_pool``).
            label_map (np.ndarray or None): training only; a lookup table from dataset label values
                to the model's training labels, applied after the augmentation (values not in
                the table are an error). ``from_config`` builds it for datasets with a
                seen/unseen split: seen class -> its index in ``seen_classes``, unseen class and
                ``ignore_label`` -> ``model_ignore_value``.
        """
        if is_train and num_classes is not None and 0 <= model_ignore_value < num_classes:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={model_ignore_value} is a valid class index of a "
                f"dataset with {num_classes} classes; set it outside [0, {num_classes}), e.g. 65535"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.model_ignore_value = model_ignore_value
        self.teacher_cache = teacher_cache
        self.label_map = None if label_map is None else torch.as_tensor(label_map).long()
        logging.getLogger(__name__).info(
            f"[SemSegDatasetMapper] augmentations ({'train' if is_train else 'test'}): "
            f"{augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_names=None):
        if dataset_names is None:
            dataset_names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST[:1]
        metas = [MetadataCatalog.get(n) for n in dataset_names]
        ignore = {m.get("ignore_label", 255) for m in metas}
        ncls = {len(m.stuff_classes) for m in metas if m.get("stuff_classes") is not None}
        if len(ignore) > 1 or len(ncls) > 1:
            raise ConfigError(
                f"Datasets {list(dataset_names)} mix ignore labels {sorted(ignore)} or class "
                f"counts {sorted(ncls)}; one mapper cannot serve them together"
            )
        augs = build_sem_seg_augmentation(cfg, is_train)
        label_map = None
        if is_train:
            label_map = cls.seen_label_map(metas, ignore, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        teacher_cache = None
        if is_train and cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED:
            from ..teacher_cache import open_teacher_caches

            teacher_cache = open_teacher_caches(cfg, dataset_names)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": ncls.pop() if ncls else None,
            "ignore_label": ignore.pop(),
            "model_ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "teacher_cache": teacher_cache,
            "label_map": label_map,
        }

    @staticmethod
    def seen_label_map(metas, ignore_labels, model_ignore_value: int) -> Optional[np.ndarray]:
        """The training lookup table of datasets with a seen/unseen split, or None without one.

        Every dataset must then have the same classes and split (one table serves them all).
        """
        with_split = [m.get("unseen_classes", None) is not None for m in metas]
        if not any(with_split):
            return None
        splits = {(tuple(m.stuff_classes), tuple(training_class_names(m))) for m in metas}
        if not all(with_split) or len(splits) > 1:
            raise ValueError(
                f"Datasets {[m.name for m in metas]} differ in classes or seen/unseen split; "
                "one mapper cannot train on them together"
            )
        classes, seen = splits.pop()
        ignore = max(ignore_labels)
        table = np.full(max(ignore, len(classes)) + 1, model_ignore_value, dtype=np.int64)
        index = {name: i for i, name in enumerate(seen)}
        for value, name in enumerate(classes):
            table[value] = index.get(name, model_ignore_value)
        table[ignore] = model_ignore_value
        return table

    def _check_label(self, label: np.ndarray, label_path: str) -> None:
        if self.num_classes is None:
            return
        values = np.unique(label)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_label)]
        if bad.size:
            raise DataError(
                f"Label map {label_path} contains values {bad[:10].tolist()} outside the "
                f"{self.num_classes} classes [0, {self.num_classes}) and the ignore label "
                f"{self.ignore_label}"
            )

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise UnreadableFileError(f"Cannot read image {file_name}: {e}") from e
        utils.check_image_size(dataset_dict, image)

        label = None
        label_path = dataset_dict.get("sem_seg_file_name")
        if label_path is not None:  # read even at test time: size and value checks
            label = read_sem_seg_label(label_path)
            if label.ndim != 2:
                raise DataError(
                    f"Label map {label_path} has shape {label.shape}; expected a single channel"
                )
            if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
                raise DataError(
                    f"Label map {label_path} holds {label.dtype} values; expected integer class "
                    "indices (8-bit PNG or 16-bit PNG/TIFF)"
                )
            if label.shape != image.shape[:2]:
                raise DataError(
                    f"Image {file_name} is {image.shape[1]}x{image.shape[0]} (WxH) but its label "
                    f"{label_path} is {label.shape[1]}x{label.shape[0]}"
                )
            self._check_label(label, label_path)
            # float64 keeps every 16-bit value exact through detectron2's non-uint8 resize path
            label = label.astype(np.float64)

        aug_input = T.AugInput(image, sem_seg=label)
        transforms = self.augmentations(aug_input)
        if self.teacher_cache is not None:
            self._add_cached_teacher_targets(
                dataset_dict, image.shape[:2], transforms, aug_input.image.shape[:2]
            )
        image = aug_input.image
        # Pytorch's dataloader is efficient on torch.Tensor due to shared-memory,
        # but not efficient on large generic data structures due to the use of pickle & mmap.
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.is_train and aug_input.sem_seg is not None:
            sem_seg = torch.as_tensor(np.ascontiguousarray(aug_input.sem_seg)).long()
            if self.label_map is not None:  # seen classes re-indexed, unseen -> ignored
                sem_seg = self.label_map[sem_seg]
            else:
                sem_seg[sem_seg == self.ignore_label] = self.model_ignore_value
            dataset_dict["sem_seg"] = sem_seg
        return dataset_dict

    def _add_cached_teacher_targets(self, dataset_dict, orig_hw, transforms, out_hw) -> None:
        """Read the image's cached teacher outputs and apply the image's geometry to them."""
        from ..teacher_cache import image_key, sample_dense, transforms_to_affine

        cache = self.teacher_cache
        key = image_key(dataset_dict)
        cg, td, cached_hw = cache.get(key, dense=cache.need_dense)
        if tuple(cached_hw) != tuple(orig_hw):
            raise DataError(
                f"Image {dataset_dict['file_name']} is {orig_hw[1]}x{orig_hw[0]} (WxH) but the "
                f"teacher cache recorded {cached_hw[1]}x{cached_hw[0]}: the cache is stale; "
                "rebuild it with tools/cache_teacher.py --overwrite."
            )
        if td is not None:
            dense = sample_dense(
                td, cached_hw, transforms_to_affine(transforms), tuple(out_hw), cache.out_grid
            )
            if cache.global_target == "crop_pool":
                cg = torch.nn.functional.normalize(dense.mean(dim=(1, 2)), dim=0)
            dataset_dict["teacher_dense"] = dense.half()
        dataset_dict["teacher_global"] = cg.half()
