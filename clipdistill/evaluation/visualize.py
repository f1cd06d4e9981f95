"""Rendering of an evaluation's predictions: ``sem_seg_predictions.json`` (written by detectron2's
``SemSegEvaluator``) read back into label maps and drawn next to the image and its ground truth
(``tools/visualize_json_results.py``)."""

import json
import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ..data import read_sem_seg_label
from ..utils.errors import ConfigError, ConfigKeyError, DataError
from ..utils.io import atomic_write, ensure_writable_dir
from ..utils.visualize import class_colors, compare_panels

__all__ = ["load_sem_seg_predictions", "render_prediction_file"]


def load_sem_seg_predictions(
    json_path: str, id_to_contiguous: Optional[Dict[int, int]] = None, fill: int = -1
) -> Dict[str, np.ndarray]:
    """Read ``sem_seg_predictions.json`` written by ``SemSegEvaluator`` into label maps.

    ``SemSegEvaluator`` writes one record per (image, class): ``file_name``, ``category_id`` and an
    RLE ``segmentation``. The ``category_id`` is the *dataset* id when the dataset's metadata has
    ``stuff_dataset_id_to_contiguous_id`` (COCO-Stuff: 1..182 with gaps), else the contiguous
    index itself.

    Args:
        json_path: the file.
        id_to_contiguous: the dataset's ``stuff_dataset_id_to_contiguous_id`` (None: the ids in
            the file are contiguous indices). JSON round trips may turn its keys into strings;
            both are accepted.
        fill: value of pixels that no record covers.

    Returns:
        dict: ``file_name -> int64 [H, W]`` map of contiguous class indices, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a list of records, no records, malformed records, or an id that
            the mapping does not know (the predictions belong to another dataset).
    """
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"Predictions file {json_path} does not exist")
    with open(json_path, "rb") as f:
        data = f.read()
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"Predictions file {json_path} is not valid JSON: {e}") from e
    if not isinstance(records, list):
        raise DataError(
            f"Predictions file {json_path} holds a {type(records).__name__}, not the list of "
            f"records that SemSegEvaluator writes"
        )
    if not records:
        raise DataError(
            f"Predictions file {json_path} holds no predictions (the evaluation saw no images?)"
        )
    mapping = None
    if id_to_contiguous is not None:
        mapping = {int(k): int(v) for k, v in id_to_contiguous.items()}
    by_file = defaultdict(list)
    index = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"file_name", "category_id", "segmentation"} <= set(r):
            raise DataError(
                f"{json_path}: record {i} is not a SemSegEvaluator prediction (needs file_name, "
                f"category_id, segmentation): {str(r)[:200]}"
            )
        by_file[r["file_name"]].append(r)
        index[id(r)] = i
    out = {}
    for file_name, recs in by_file.items():
        label = None
        for r in recs:
            try:
                m = mask_util.decode(r["segmentation"]).astype(bool)
                cid = int(r["category_id"])
                if m.ndim != 2:
                    raise ValueError(f"decoded mask has shape {m.shape}")
            except Exception as e:  # pycocotools raises several types for damaged RLE
                raise DataError(
                    f"{json_path}: record {index[id(r)]} (file_name {file_name}) has a damaged "
                    f"segmentation or category_id ({type(e).__name__}: {e})"
                ) from e
            if label is None:
                label = np.full(m.shape, fill, dtype=np.int64)
            elif m.shape != label.shape:
                raise DataError(
                    f"{json_path}: masks of {file_name} have different sizes {m.shape} and "
                    f"{label.shape}"
                )
            if mapping is not None:
                if cid not in mapping:
                    raise DataError(
                        f"{json_path}: category_id {cid} of {file_name} is not in the dataset's "
                        f"stuff_dataset_id_to_contiguous_id (ids {min(mapping)}..{max(mapping)}); "
                        f"were these predictions made on another dataset?"
                    )
                cid = mapping[cid]
            label[m] = cid
        out[file_name] = label
    return out


def render_prediction_file(
    json_path: str,
    dataset_name: str,
    output_dir: str,
    limit: int = 0,
    min_area: int = 0,
    alpha: float = 0.6,
    progress: bool = True,
    min_side: int = 256,
) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Render ``sem_seg_predictions.json`` of ``dataset_name`` as ``image | prediction | ground
    truth | legend`` PNGs (one per image, named after the image) in ``output_dir``
    (``utils.visualize.compare_panels``: masks as colours, a legend of the classes present beside
    them with unseen classes marked, images below ``min_side`` pixels enlarged).

    Category ids are mapped back through the dataset's ``stuff_dataset_id_to_contiguous_id`` when
    it has one; colours and names come from its ``stuff_colors`` / ``stuff_classes``. An image
    whose path in the file does not exist is looked up in the dataset by its base name (e.g.
    predictions written on another machine); if that fails too it is skipped and reported.

    Args:
        limit: render at most this many images (0: all), in file-name order.
        min_area: connected regions smaller than this (pixels) are not drawn.
        min_side: enlarge images whose shorter side is below this (integer factor, nearest).

    Returns:
        ``(written PNG paths, [(image, reason)] of the skipped images)``.

    Raises:
        KeyError: the dataset is not registered. FileNotFoundError / ValueError: see
        ``load_sem_seg_predictions``.
    """
    from tqdm import tqdm

    from detectron2.data import DatasetCatalog, MetadataCatalog

    if dataset_name not in DatasetCatalog.list():
        close = [n for n in DatasetCatalog.list() if n.split("_")[0] in dataset_name]
        raise ConfigKeyError(
            f"dataset {dataset_name!r} is not registered"
            + (f"; registered names like it: {sorted(close)[:10]}" if close else "")
        )
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("stuff_classes", None) is None:
        raise ConfigError(f"dataset {dataset_name!r} has no stuff_classes (not a sem_seg dataset?)")
    preds = load_sem_seg_predictions(json_path, meta.get("stuff_dataset_id_to_contiguous_id", None))
    names = list(meta.stuff_classes)
    colors = class_colors(len(names), meta.get("stuff_colors", None))
    unseen = meta.get("unseen_classes", None) or ()
    records = DatasetCatalog.get(dataset_name)
    gt_files = {d["file_name"]: d.get("sem_seg_file_name") for d in records}
    by_base = {os.path.basename(d["file_name"]): d["file_name"] for d in records}
    items = sorted(preds.items())
    if limit > 0:
        items = items[:limit]
    ensure_writable_dir(output_dir, "--output folder")
    written, failed = [], []
    for file_name, pred in tqdm(items, desc="rendering", unit="image", disable=not progress):
        image_path = file_name
        if not os.path.isfile(image_path):
            image_path = by_base.get(os.path.basename(file_name), file_name)
        if not os.path.isfile(image_path):
            failed.append((file_name, "image file is missing"))
            continue
        try:
            with Image.open(image_path) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as e:
            failed.append((file_name, f"unreadable image ({type(e).__name__}: {e})"))
            continue
        if image.shape[:2] != pred.shape:
            failed.append(
                (file_name, f"prediction {pred.shape} and image {image.shape[:2]} sizes differ")
            )
            continue
        gt = None
        gt_path = gt_files.get(image_path) or gt_files.get(file_name)
        if gt_path and os.path.isfile(gt_path):
            gt = read_sem_seg_label(gt_path)
            if gt.shape != pred.shape:
                gt = None
        panel = compare_panels(
            image,
            pred,
            names,
            colors,
            ground_truth=gt,
            title=os.path.basename(file_name),
            unseen=unseen,
            min_side=min_side,
            alpha=alpha,
            min_area=min_area,
        )
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(file_name))[0] + ".png")
        with atomic_write(out) as f:
            Image.fromarray(panel).save(f, format="PNG")
        written.append(out)
    return written, failed
