#!/usr/bin/env python
"""Render sem_seg_predictions.json (written by SemSegEvaluator) next to the ground truth.

    python tools/visualize_json_results.py --input out/inference/sem_seg_predictions.json \
        --output viz --dataset voc20_sem_seg_val [--limit 20] [--min-area 0]

Writes one PNG per image: input | prediction | ground truth, in the dataset's colours.
"""
import argparse
import logging
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

import clipdistill  # noqa: F401  (registers datasets)
from clipdistill.data import read_sem_seg_label
from clipdistill.utils.visualize import draw_sem_seg, load_sem_seg_predictions, side_by_side


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="sem_seg_predictions.json")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument("--limit", type=int, default=0, help="render at most N images (0: all)")
    parser.add_argument("--min-area", type=int, default=0,
                        help="do not label regions smaller than this many pixels")
    args = parser.parse_args()
    logger = setup_logger(name="clipdistill")
    if args.dataset not in DatasetCatalog.list():
        parser.error(f"--dataset {args.dataset!r} is not registered")
    meta = MetadataCatalog.get(args.dataset)
    id_map = meta.get("stuff_dataset_id_to_contiguous_id", None)
    preds = load_sem_seg_predictions(args.input, id_map)
    gt_files = {d["file_name"]: d.get("sem_seg_file_name") for d in DatasetCatalog.get(args.dataset)}
    os.makedirs(args.output, exist_ok=True)
    items = sorted(preds.items())
    if args.limit > 0:
        items = items[: args.limit]
    failed = 0
    for file_name, pred in tqdm(items, desc="rendering"):
        if not os.path.isfile(file_name):
            logger.warning(f"Image {file_name} is missing; skipped")
            failed += 1
            continue
        image = np.asarray(Image.open(file_name).convert("RGB"))
        panels = [image, draw_sem_seg(image, pred, meta, args.min_area)]
        gt_path = gt_files.get(file_name)
        if gt_path and os.path.isfile(gt_path):
            panels.append(draw_sem_seg(image, read_sem_seg_label(gt_path), meta, args.min_area))
        out = os.path.join(args.output, os.path.splitext(os.path.basename(file_name))[0] + ".png")
        Image.fromarray(side_by_side(panels)).save(out + ".tmp.png")
        os.replace(out + ".tmp.png", out)
    logger.info(f"Rendered {len(items) - failed} images into {args.output}; {failed} failed")
    return 1 if failed and failed == len(items) else 0


if __name__ == "__main__":
    raise SystemExit(main())
