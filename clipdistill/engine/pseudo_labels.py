"""Pseudo-labels from any segmenter (e.g. CaR) for a registered dataset, as a new dataset.

The annotation-free protocol of MaskCLIP+ / CaR-as-teacher: a training-free segmenter labels the
training images with the dataset's own vocabulary, and the student trains on those labels.

``make_pseudo_labels`` writes, for every image of ``source``, the arg-max of the segmenter's
``sem_seg`` as a PNG (8-bit, or 16-bit beyond 255 classes) under ``<output>/labels/``, then a
``manifest.json`` that registers ``<name>`` (same images, same classes, the pseudo-labels as
``sem_seg_file_name``). It is

* resumable: an image whose PNG exists is skipped (PNGs are written to a temporary name and
  renamed, so an existing file is complete); ``<output>/fingerprint.json`` records the config,
  and resuming with a different one is an error;
* distributed: under detectron2's ``launch`` each process labels every ``world_size``-th image;
  the main process writes the manifest once all are done.

Datasets written under ``$DETECTRON2_DATASETS/pseudo_labels/<name>/`` are registered whenever
``clipdistill`` is imported (``data/datasets/register_pseudo_labels.py``).
"""

import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils import comm

from ..config import check_datasets_registered
from ..data.dataset_mappers.semantic_mapper import UnreadableFileError, build_sem_seg_augmentation
from ..data.datasets.register_pseudo_labels import (
    PSEUDO_LABEL_SUBDIR,
    register_pseudo_label_dataset,
)
from ..data.datasets.common import datasets_root
from ..utils.errors import DataError
from ..utils.io import atomic_save_image, atomic_save_json
from .prediction_cache import config_fingerprint

__all__ = ["make_pseudo_labels", "default_output_dir"]

logger = logging.getLogger(__name__)


def default_output_dir(name: str) -> str:
    """``$DETECTRON2_DATASETS/pseudo_labels/<name>``: where datasets are found at import."""
    return os.path.join(datasets_root(), PSEUDO_LABEL_SUBDIR, name)


def _label_path(output_dir: str, file_name: str, index: int) -> str:
    stem = os.path.splitext(os.path.basename(file_name))[0]
    return os.path.join(output_dir, "labels", f"{index:06d}_{stem}.png")


def _write_json(path: str, data) -> None:
    atomic_save_json(path, data)


def _check_fingerprint(output_dir: str, fingerprint: Dict) -> None:
    path = os.path.join(output_dir, "fingerprint.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(
                f"{path} is damaged ({type(e).__name__}: {e}); delete {output_dir} (the "
                "labels are made again) or choose another --output-dir"
            ) from e
        if old != fingerprint:
            keys = set(old) | set(fingerprint)
            differs = sorted(k for k in keys if old.get(k) != fingerprint.get(k))
            raise DataError(
                f"{output_dir} holds pseudo-labels made with another config or source "
                f"({path}: {', '.join(differs)} differ); delete the folder or choose another "
                "--output-dir"
            )
    elif comm.is_main_process():
        _write_json(path, fingerprint)


@torch.no_grad()
def make_pseudo_labels(
    cfg,
    model: torch.nn.Module,
    source: str,
    name: str,
    output_dir: Optional[str] = None,
) -> Optional[str]:
    """Label every image of the registered dataset ``source`` with ``model``.

    Args:
        cfg: the model's config (its ``INPUT`` test geometry is used, as at evaluation).
        model: a segmenter in eval mode (``[{"image", "height", "width", "dataset_name"}] ->
            [{"sem_seg": [K, H, W]}]``).
        source: registered dataset; its ``stuff_classes`` are the vocabulary.
        name: the new dataset's name.
        output_dir: default ``default_output_dir(name)``.

    Returns:
        The manifest path on the main process (None elsewhere). The dataset ``name`` is
        registered in this process.
    """
    output_dir = output_dir or default_output_dir(name)
    check_datasets_registered([source], "--dataset")
    meta = MetadataCatalog.get(source)
    classes = list(meta.stuff_classes)
    dicts = DatasetCatalog.get(source)
    _check_fingerprint(
        output_dir, {"source": source, "config": config_fingerprint(cfg), "classes": classes}
    )
    comm.synchronize()
    augs = T.AugmentationList(build_sem_seg_augmentation(cfg, False))
    rank, world = comm.get_rank(), comm.get_world_size()
    model.eval()
    done = skipped = 0
    for index in range(rank, len(dicts), world):
        record = dicts[index]
        path = _label_path(output_dir, record["file_name"], index)
        if os.path.isfile(path):
            skipped += 1
            continue
        try:
            image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        except Exception as e:  # PIL raises several types for damaged files
            raise UnreadableFileError(f"Cannot read image {record['file_name']}: {e}") from e
        height, width = image.shape[:2]
        aug = T.AugInput(image)
        augs(aug)
        tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        out = model(
            [{"image": tensor, "height": height, "width": width, "dataset_name": source}]
        )[0]["sem_seg"]
        label = out.argmax(dim=0).cpu().numpy()
        dtype = np.uint8 if len(classes) <= 255 else np.uint16
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save_image(path, label.astype(dtype))
        done += 1
    logger.info(
        f"[pseudo-labels] rank {rank}: {done} images labelled, {skipped} already done "
        f"({output_dir})"
    )
    comm.synchronize()
    records: List[Dict] = []
    missing = []
    for index, record in enumerate(dicts):
        path = _label_path(output_dir, record["file_name"], index)
        if not os.path.isfile(path):
            missing.append(path)
        records.append({"file_name": record["file_name"], "sem_seg_file_name": path})
    if missing:
        raise RuntimeError(f"{len(missing)} pseudo-labels are missing, e.g. {missing[:3]}")
    manifest = os.path.join(output_dir, "manifest.json")
    if comm.is_main_process():
        ignore = 255 if len(classes) <= 255 else 65535
        _write_json(
            manifest,
            {
                "name": name,
                "source": source,
                "stuff_classes": classes,
                "ignore_label": ignore,
                "records": records,
            },
        )
    comm.synchronize()
    register_pseudo_label_dataset(manifest)
    return manifest if comm.is_main_process() else None
