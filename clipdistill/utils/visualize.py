"""Rendering of semantic-segmentation predictions (used by tools/visualize_json_results.py and
tools/demo.py)."""
import json
import os
from collections import defaultdict
from typing import Dict, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["load_sem_seg_predictions", "draw_sem_seg", "side_by_side"]


def load_sem_seg_predictions(
    json_path: str, id_to_contiguous: Optional[Dict[int, int]] = None, fill: int = -1
) -> Dict[str, np.ndarray]:
    """Read ``sem_seg_predictions.json`` written by ``SemSegEvaluator`` into label maps.

    Args:
        json_path: the file. id_to_contiguous: the dataset's ``stuff_dataset_id_to_contiguous_id``
            (category ids in the file are dataset ids when the dataset has one).
        fill: value of pixels no record covers.
    Returns:
        dict: ``file_name -> int64 [H, W]`` map of contiguous class indices.
    """
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"Predictions file {json_path} does not exist")
    with open(json_path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"Predictions file {json_path} is not valid JSON: {e}") from e
    if not records:
        raise ValueError(f"Predictions file {json_path} holds no predictions")
    by_file = defaultdict(list)
    for r in records:
        by_file[r["file_name"]].append(r)
    out = {}
    for file_name, recs in by_file.items():
        label = None
        for r in recs:
            m = mask_util.decode(r["segmentation"]).astype(bool)
            if label is None:
                label = np.full(m.shape, fill, dtype=np.int64)
            cid = r["category_id"]
            if id_to_contiguous is not None:
                if cid not in id_to_contiguous:
                    raise ValueError(
                        f"{json_path}: category_id {cid} of {file_name} is not in the dataset's "
                        f"stuff_dataset_id_to_contiguous_id"
                    )
                cid = id_to_contiguous[cid]
            label[m] = cid
        out[file_name] = label
    return out


def draw_sem_seg(image_rgb: np.ndarray, label: np.ndarray, metadata, min_area: int = 0,
                 alpha: float = 0.6) -> np.ndarray:
    """Overlay ``label`` (class indices; values outside the classes are not drawn) with the
    dataset's colours and class names; returns an RGB uint8 image."""
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    return vis.draw_sem_seg(label, area_threshold=min_area, alpha=alpha).get_image()


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate RGB images horizontally (same height) with a white gap."""
    h = max(p.shape[0] for p in panels)
    cols = []
    for i, p in enumerate(panels):
        if p.shape[0] != h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        cols.append(p)
        if i + 1 < len(panels):
            cols.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(cols, axis=1)
