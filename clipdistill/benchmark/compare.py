"""One comparison of segmenters in one run (``tools/compare.py``, ``docs/COMPARISON.md``).

For each entry (a config file, its own overrides, optionally a label) the segmenter is built from
its own config and gets one row: mIoU on every dataset of its evaluation (``DATASETS.TEST``, read
from ``OUTPUT_DIR/inference/results.json`` as ``Trainer.test`` writes it, or evaluated now),
parameters (total, and per image: without the segmenter's ``inference_excluded_modules``), GMACs,
latency and images/s at a fixed input size and peak memory, all measured by the benchmark harness
(``run.bench_inference``). The result is written as a Markdown table, JSON, CSV and a plot of
accuracy against images/s (log scale), each atomically.
"""

import csv
import io
import json
import logging
import math
import os
import platform
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from ..config import get_clipdistill_cfg
from ..utils.errors import ConfigError, DataError
from ..utils.io import atomic_write, ensure_writable_dir
from .flops import FLOP_CONVENTION
from .run import bench_inference
from .targets import segmenter_target

__all__ = [
    "Entry",
    "parse_entry",
    "read_accuracy",
    "evaluate",
    "run_comparison",
    "format_markdown",
    "write_comparison",
    "COLUMNS",
    "EVALUATE_CHOICES",
]

logger = logging.getLogger(__name__)

#: When to run the evaluation: "never" (read results.json only), "missing" (evaluate the entries
#: without one), "always".
EVALUATE_CHOICES = ("never", "missing", "always")

#: Columns of every row (then one ``mIoU <dataset>`` column per dataset).
COLUMNS = (
    ("segmenter", "label", "s"),
    ("META_ARCH", "meta_arch", "s"),
    ("params total (M)", "params_total_m", ".2f"),
    ("params per image (M)", "params_m", ".2f"),
    ("GMACs / image", "gflops_per_image", ".2f"),
    ("model input", "input", "s"),
    ("latency (ms)", "latency_ms", ".1f"),
    ("images/s", "images_per_s", ".2f"),
    ("peak mem (MiB)", "peak_mem_mb", ".0f"),
)


@dataclass
class Entry:
    """One segmenter of the comparison: its config file, overrides and row label."""

    label: str
    config_file: str
    opts: List[str] = field(default_factory=list)


def parse_entry(spec: str) -> Entry:
    """``"[LABEL=]CONFIG_FILE [KEY VALUE ...]"`` (shell quoting) -> ``Entry``.

    Raises:
        ValueError: an empty spec, or overrides that are not KEY VALUE pairs.
    """
    words = shlex.split(spec)
    if not words:
        raise ConfigError("empty --entry: give '[LABEL=]CONFIG_FILE [KEY VALUE ...]'")
    head, opts = words[0], words[1:]
    label = ""
    if "=" in head:
        label, head = head.split("=", 1)
    if len(opts) % 2:
        raise ConfigError(
            f"--entry {spec!r}: the overrides after the config file must be KEY VALUE pairs, got "
            f"{opts}"
        )
    if not label:
        label = os.path.splitext(os.path.basename(head))[0]
    return Entry(label=label, config_file=head, opts=opts)


def read_accuracy(cfg) -> Optional[Dict[str, float]]:
    """``{dataset: mIoU}`` from ``OUTPUT_DIR/inference/results.json`` (None when absent).

    Raises:
        ValueError: the file exists but is not a results table (naming the file).
    """
    path = os.path.join(cfg.OUTPUT_DIR, "inference", "results.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            rows = json.load(f)["results"]
        return {r["dataset"]: float(r["mIoU"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a results table written by Trainer.test: {e}") from e


def evaluate(cfg) -> Dict[str, float]:
    """Evaluate ``cfg``'s segmenter on ``DATASETS.TEST`` (``MODEL.WEIGHTS`` loaded strictly), as
    ``tools/train_net.py --eval-only`` does; returns ``{dataset: mIoU}``."""
    from ..engine import SegmenterCheckpointer, Trainer

    model = Trainer.build_model(cfg)
    SegmenterCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    Trainer.test(cfg, model)
    acc = read_accuracy(cfg)
    if acc is None:  # Trainer.test writes it on the main process; nothing evaluated otherwise
        raise RuntimeError(f"evaluation of {cfg.OUTPUT_DIR} wrote no inference/results.json")
    return acc


def run_comparison(
    entries: Sequence[Entry],
    common_opts: Sequence[str] = (),
    *,
    evaluate_mode: str = "missing",
    device: Optional[str] = None,
    size: int = 512,
    batch_size: int = 1,
    iters: int = 10,
    warmup: int = 3,
    flops: bool = True,
    test_resize: bool = True,
) -> dict:
    """Build, evaluate (per ``evaluate_mode``) and measure every entry; returns the JSON-ready
    comparison ``{"meta", "datasets", "rows"}``.

    Args:
        entries: the segmenters; each config gets ``common_opts`` then its own overrides.
        evaluate_mode: one of ``EVALUATE_CHOICES``.
        device: where to time (default: each config's ``MODEL.DEVICE``).
        size: side of the square test images (the accuracy is each config's own evaluation).
        batch_size, iters, warmup, flops: as ``tools/benchmark.py``.
        test_resize: time each segmenter on the ``size x size`` image after its config's own
            test-time resize (``INPUT.MIN_SIZE_TEST``), as its evaluation sees images; outputs
            are at ``size x size`` either way.
    """
    if evaluate_mode not in EVALUATE_CHOICES:
        raise ConfigError(f"evaluate mode {evaluate_mode!r}: choose one of {EVALUATE_CHOICES}")
    labels = [e.label for e in entries]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"two entries are labelled {dup}: give them LABEL= prefixes")
    rows, datasets = [], []
    for entry in entries:
        cfg = get_clipdistill_cfg(entry.config_file, list(common_opts) + list(entry.opts))
        acc = read_accuracy(cfg)
        source = "results.json" if acc is not None else None
        if evaluate_mode == "always" or (evaluate_mode == "missing" and acc is None):
            logger.info(f"compare: evaluating {entry.label} on {list(cfg.DATASETS.TEST)} ...")
            acc, source = evaluate(cfg), "evaluated"
        acc = acc or {}
        datasets += [d for d in acc if d not in datasets]
        dev = torch.device(device or cfg.MODEL.DEVICE)
        logger.info(f"compare: measuring {entry.label} on {dev} ...")
        target = segmenter_target(cfg, entry.label, test_resize=test_resize)
        speed = bench_inference(target, cfg, dev, size, batch_size, iters, warmup, flops)
        rows.append(
            {
                **speed,
                "label": entry.label,
                "meta_arch": cfg.MODEL.META_ARCHITECTURE,
                "config_file": entry.config_file,
                "opts": list(common_opts) + list(entry.opts),
                "weights": cfg.MODEL.WEIGHTS,
                "results_json": os.path.join(cfg.OUTPUT_DIR, "inference", "results.json"),
                "accuracy_source": source,
                "miou": acc,
            }
        )
    meta = {
        "size": size,
        "batch_size": batch_size,
        "iters": iters,
        "warmup": warmup,
        "test_resize": test_resize,
        "statistic": "median over iters after warmup",
        "flop_convention": FLOP_CONVENTION,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    return {"meta": meta, "datasets": datasets, "rows": rows}


# ------------------------------------------------------------------------------------ outputs
def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _table(result: dict) -> List[List[str]]:
    header = [c[0] for c in COLUMNS] + [f"mIoU {d}" for d in result["datasets"]]
    body = [
        [_fmt(r.get(key), spec) for _, key, spec in COLUMNS]
        + [_fmt(r["miou"].get(d), ".2f") for d in result["datasets"]]
        for r in result["rows"]
    ]
    return [header] + body


def format_markdown(result: dict) -> str:
    """The comparison as a Markdown table, with a line on how it was measured."""
    rows = _table(result)
    m = result["meta"]
    lines = [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---" if i < 2 or i == 5 else "---:" for i in range(len(rows[0]))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    where = m["cuda_device"] or m["cpu"]
    lines += [
        "",
        f"Speed: {m['size']}x{m['size']} images, batch {m['batch_size']}"
        + (", after each config's test-time resize" if m["test_resize"] else "")
        + f", {m['statistic']} (iters={m['iters']}, warmup={m['warmup']}), {where}, torch "
        f"{m['torch']}, {m['torch_threads']} threads. {m['flop_convention']}. mIoU: each "
        "segmenter's own evaluation (Trainer.test, detectron2's SemSegEvaluator).",
    ]
    return "\n".join(lines) + "\n"


def _csv(result: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(_table(result))
    return buf.getvalue()


def plot_comparison(result: dict, path: str) -> None:
    """Accuracy against images/s (log x), one panel per dataset, one labelled point per segmenter
    evaluated on it; without any accuracy, GMACs against images/s. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, "miou") for d in result["datasets"]] or [(None, "gflops_per_image")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (dataset, what) in zip(axes[0], panels):
        for r in result["rows"]:
            y = r["miou"].get(dataset) if what == "miou" else r.get(what)
            x = r.get("images_per_s")
            if x is None or y is None or not x > 0:
                continue
            ax.scatter([x], [y], s=36)
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel(f"images/s ({result['meta']['size']}x{result['meta']['size']}, log scale)")
        ax.set_ylabel("mIoU" if what == "miou" else "GMACs / image")
        ax.set_title(dataset or "no accuracy available: cost only")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_comparison(result: dict, output_dir: str, name: str = "comparison") -> Dict[str, str]:
    """Write ``<name>.md``, ``.json``, ``.csv`` and ``.png`` in ``output_dir`` (each atomically);
    returns their paths by extension."""
    ensure_writable_dir(output_dir, "--output-dir")
    paths = {ext: os.path.join(output_dir, f"{name}.{ext}") for ext in ("md", "json", "csv", "png")}
    for ext, text in (
        ("md", format_markdown(result)),
        ("json", json.dumps(result, indent=1)),
        ("csv", _csv(result)),
    ):
        with atomic_write(paths[ext], "w") as f:
            f.write(text)
    plot_comparison(result, paths["png"])
    return paths
