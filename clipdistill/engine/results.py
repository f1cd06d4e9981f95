"""One table for an evaluation over several datasets: printed, and written as JSON and CSV."""

import csv
import os
from typing import Dict, List

import detectron2
from tabulate import tabulate

from ..evaluation.zero_shot import ZERO_SHOT_METRICS
from ..utils.io import atomic_save_json, atomic_write

__all__ = ["summarize_results", "write_results"]

METRICS = ("mIoU", "fwIoU", "mACC", "pACC")


def summarize_results(results: Dict[str, Dict]) -> List[Dict]:
    """``{dataset: {"sem_seg": {...}}}`` -> one row per dataset with the four headline metrics,
    plus seen / unseen mIoU and hIoU when any dataset reports them (NaN for the others)."""
    sems = {
        name: (res.get("sem_seg", {}) if isinstance(res, dict) else {})
        for name, res in results.items()
    }
    metrics = METRICS
    if any(m in sem for sem in sems.values() for m in ZERO_SHOT_METRICS):
        metrics = METRICS + ZERO_SHOT_METRICS
    return [
        {"dataset": name, **{m: sem.get(m, float("nan")) for m in metrics}}
        for name, sem in sems.items()
    ]


def write_results(rows: List[Dict], output_dir: str) -> str:
    """Write ``results.json`` and ``results.csv`` in ``output_dir`` (atomically); return the
    printed table. The JSON also records the detectron2 version (its mIoU definition changed
    after v0.6, see docs)."""
    os.makedirs(output_dir, exist_ok=True)
    payload = {"detectron2_version": detectron2.__version__, "results": rows}
    atomic_save_json(os.path.join(output_dir, "results.json"), payload, indent=2)
    with atomic_write(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["dataset", *METRICS])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    metrics = [k for k in rows[0] if k != "dataset"] if rows else list(METRICS)
    return tabulate(
        [[r["dataset"], *(f"{r[m]:.2f}" for m in metrics)] for r in rows],
        headers=["dataset", *metrics],
    )
