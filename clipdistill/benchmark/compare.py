"""One comparison of segmenters in one run (``tools/compare.py``, ``docs/COMPARISON.md``).

For each entry (a config file, its own overrides, optionally a label) the segmenter is built from
its own config and gets one row: mIoU on every dataset of its evaluation (``DATASETS.TEST``, read
from ``OUTPUT_DIR/inference/results.json`` as ``Trainer.test`` writes it, or evaluated now), with
seen / unseen mIoU and hIoU where the dataset has a seen/unseen split, parameters (total, and per
image: without the segmenter's ``inference_excluded_modules``), GMACs, latency and images/s at one
or more input sizes and peak memory, all measured by the benchmark harness
(``run.bench_inference``). The result is written as a Markdown table, JSON, CSV and a plot of
accuracy against images/s (log scale), each atomically.

An entry marked ``train`` is first trained (and evaluated) by ``tools/train_net.py --resume`` once
per seed (``engine.runs.run_train_net``: a finished run is reused, an interrupted one resumes);
its accuracy is the mean and standard deviation over the seeds' ``results.json``. Entries can be
listed in a file (``read_entries_file``; ``configs/compare/testbed.txt`` is the testbed's).
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
from ..engine.runs import run_train_net
from ..evaluation.zero_shot import ZERO_SHOT_METRICS
from ..utils.errors import ConfigError, DataError
from ..utils.io import atomic_write, ensure_writable_dir
from .flops import FLOP_CONVENTION
from .run import bench_inference
from .targets import segmenter_target

__all__ = [
    "Entry",
    "parse_entry",
    "read_entries_file",
    "read_results",
    "read_accuracy",
    "train_entry",
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

#: Metrics read from ``results.json`` (each when present): mIoU, then the zero-shot ones.
ACCURACY_METRICS = ("mIoU",) + tuple(ZERO_SHOT_METRICS)

#: Columns of every row (then one ``mIoU <dataset>`` column per dataset, with seen / unseen mIoU
#: and hIoU where a dataset has a seen/unseen split, and latency and images/s per further size).
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
    """One segmenter of the comparison: its config file, overrides and row label; ``train``: the
    segmenter is trained first (per seed) by ``tools/train_net.py``."""

    label: str
    config_file: str
    opts: List[str] = field(default_factory=list)
    train: bool = False


#: the word that marks an entry to train first: ``"train [LABEL=]CONFIG_FILE ..."``
TRAIN_WORD = "train"


def parse_entry(spec: str) -> Entry:
    """``"[train] [LABEL=]CONFIG_FILE [KEY VALUE ...]"`` (shell quoting) -> ``Entry``.

    Raises:
        ValueError: an empty spec, or overrides that are not KEY VALUE pairs.
    """
    words = shlex.split(spec)
    train = len(words) > 1 and words[0] == TRAIN_WORD
    if train:
        words = words[1:]
    if not words:
        raise ConfigError("empty --entry: give '[train] [LABEL=]CONFIG_FILE [KEY VALUE ...]'")
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
    return Entry(label=label, config_file=head, opts=opts, train=train)


def read_entries_file(path: str) -> List[Entry]:
    """The entries of a file, one ``parse_entry`` spec per line; blank lines and lines starting
    with ``#`` are skipped. Relative config paths are read from the current directory (run from
    the repository root).

    Raises:
        ConfigError: a line that is not an entry (naming the file and line).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--entries-file {path}: cannot be read ({e})") from e
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entries.append(parse_entry(line))
        except ValueError as e:
            raise ConfigError(f"{path}:{number}: {e}") from e
    if not entries:
        raise ConfigError(f"--entries-file {path}: no entry in it")
    return entries


def read_results(cfg) -> Optional[Dict[str, Dict[str, float]]]:
    """``{dataset: {metric: value}}`` from ``OUTPUT_DIR/inference/results.json`` (None when
    absent): mIoU, and seen / unseen mIoU and hIoU where the dataset reports them (not NaN).

    Raises:
        DataError: the file exists but is not a results table (naming the file).
    """
    path = os.path.join(cfg.OUTPUT_DIR, "inference", "results.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            rows = json.load(f)["results"]
        out = {}
        for r in rows:
            values = {m: float(r[m]) for m in ACCURACY_METRICS if m in r}
            if "mIoU" not in values:
                raise KeyError("mIoU")
            out[r["dataset"]] = {m: v for m, v in values.items() if not math.isnan(v)}
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a results table written by Trainer.test: {e}") from e


def read_accuracy(cfg) -> Optional[Dict[str, float]]:
    """``{dataset: mIoU}`` from ``OUTPUT_DIR/inference/results.json`` (None when absent)."""
    res = read_results(cfg)
    return None if res is None else {d: m["mIoU"] for d, m in res.items()}


def _mean_std(runs: Sequence[Dict[str, Dict[str, float]]]):
    """Per dataset and metric, the mean and sample standard deviation (None for one run) over
    the runs that report it."""
    mean: Dict[str, Dict[str, float]] = {}
    std: Dict[str, Dict[str, Optional[float]]] = {}
    for d in dict.fromkeys(d for r in runs for d in r):
        for m in ACCURACY_METRICS:
            values = [r[d][m] for r in runs if d in r and m in r[d]]
            if not values:
                continue
            mu = sum(values) / len(values)
            sd = None
            if len(values) > 1:
                sd = math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))
            mean.setdefault(d, {})[m] = mu
            std.setdefault(d, {})[m] = sd
    return mean, std


def train_entry(
    entry: Entry,
    common_opts: Sequence[str],
    seeds: Sequence[int],
    runs_dir: str,
    env: Optional[Dict[str, str]] = None,
) -> List[str]:
    """Train and evaluate ``entry`` once per seed with ``tools/train_net.py --resume`` into
    ``runs_dir/<label>/seed<k>`` (a finished run with the same settings is reused, an interrupted
    one resumes from its last checkpoint); returns the run folders, in seed order."""
    opts = list(common_opts) + list(entry.opts)
    max_iter = get_clipdistill_cfg(entry.config_file, opts).SOLVER.MAX_ITER
    folders = []
    for seed in seeds:
        out = os.path.join(runs_dir, entry.label, f"seed{seed}")
        run_train_net(
            entry.config_file,
            out,
            opts,
            seed,
            env=env,
            label=f"{entry.label} seed {seed}",
            max_iter=max_iter,
            resume=True,
        )
        folders.append(out)
    return folders


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
    size=512,
    batch_size: int = 1,
    iters: int = 10,
    warmup: int = 3,
    flops: bool = True,
    test_resize: bool = True,
    seeds: Sequence[int] = (0,),
    runs_dir: Optional[str] = None,
    train_threads: Optional[int] = None,
    raw_sizes: Sequence[int] = (),
) -> dict:
    """Train (the ``train`` entries), build, evaluate (per ``evaluate_mode``) and measure every
    entry; returns the JSON-ready comparison ``{"meta", "datasets", "rows"}``.

    Args:
        entries: the segmenters; each config gets ``common_opts`` then its own overrides.
        evaluate_mode: one of ``EVALUATE_CHOICES`` (a trained entry is evaluated by its run).
        device: where to time (default: each config's ``MODEL.DEVICE``).
        size: side of the square test images, or several sides (each measured; the first is
            the main one of the table and the plot). The accuracy is each config's own
            evaluation.
        batch_size, iters, warmup, flops: as ``tools/benchmark.py``.
        test_resize: time each segmenter on the ``size x size`` image after its config's own
            test-time resize (``INPUT.MIN_SIZE_TEST``), as its evaluation sees images; outputs
            are at ``size x size`` either way.
        seeds: the seeds of every ``train`` entry (its accuracy: mean and std over them).
        runs_dir: where the ``train`` entries' runs go (``<runs_dir>/<label>/seed<k>``).
        train_threads: ``OMP_NUM_THREADS`` of the training runs (default: inherited).
        raw_sizes: sizes at which every segmenter gets the image as it is, without its
            test-time resize (a cost comparison at one input resolution).
    """
    if evaluate_mode not in EVALUATE_CHOICES:
        raise ConfigError(f"evaluate mode {evaluate_mode!r}: choose one of {EVALUATE_CHOICES}")
    sizes = [int(x) for x in (size if isinstance(size, (list, tuple)) else [size])]
    labels = [e.label for e in entries]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"two entries are labelled {dup}: give them LABEL= prefixes")
    if any(e.train for e in entries) and not runs_dir:
        raise ConfigError("entries marked 'train' need a runs folder (--runs-dir)")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    env = None
    if train_threads:
        t = str(train_threads)
        env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)
    rows, datasets = [], []
    for entry in entries:
        opts = list(common_opts) + list(entry.opts)
        if entry.train:
            folders = train_entry(entry, common_opts, seeds, runs_dir, env)
            cfgs = [
                get_clipdistill_cfg(
                    entry.config_file,
                    opts + ["OUTPUT_DIR", f, "MODEL.WEIGHTS", os.path.join(f, "model_final.pth")],
                )
                for f in folders
            ]
            runs = [read_results(c) for c in cfgs]
            missing = [c.OUTPUT_DIR for c, r in zip(cfgs, runs) if r is None]
            if missing:
                raise RuntimeError(f"training runs without inference/results.json: {missing}")
            source = "trained"
        else:
            cfgs = [get_clipdistill_cfg(entry.config_file, opts)]
            res = read_results(cfgs[0])
            source = "results.json" if res is not None else None
            if evaluate_mode == "always" or (evaluate_mode == "missing" and res is None):
                logger.info(
                    f"compare: evaluating {entry.label} on {list(cfgs[0].DATASETS.TEST)} ..."
                )
                evaluate(cfgs[0])
                res, source = read_results(cfgs[0]), "evaluated"
            runs = [res] if res is not None else []
        metrics, metrics_std = _mean_std(runs)
        datasets += [d for d in metrics if d not in datasets]
        cfg = cfgs[0]
        dev = torch.device(device or cfg.MODEL.DEVICE)
        speeds = {}
        for s in sizes:
            logger.info(f"compare: measuring {entry.label} at {s}x{s} on {dev} ...")
            resize = test_resize and s not in raw_sizes
            target = segmenter_target(cfg, entry.label, test_resize=resize)
            speeds[str(s)] = bench_inference(target, cfg, dev, s, batch_size, iters, warmup, flops)
        rows.append(
            {
                **speeds[str(sizes[0])],
                "label": entry.label,
                "meta_arch": cfg.MODEL.META_ARCHITECTURE,
                "config_file": entry.config_file,
                "opts": opts,
                "weights": cfg.MODEL.WEIGHTS,
                "trained": entry.train,
                "seeds": list(seeds) if entry.train else None,
                "results_json": [
                    os.path.join(c.OUTPUT_DIR, "inference", "results.json") for c in cfgs
                ],
                "accuracy_source": source,
                "miou": {d: m["mIoU"] for d, m in metrics.items()},
                "metrics": metrics,
                "metrics_std": metrics_std,
                "speed": speeds,
            }
        )
    meta = {
        "size": sizes[0],
        "sizes": sizes,
        "batch_size": batch_size,
        "iters": iters,
        "warmup": warmup,
        "test_resize": test_resize,
        "raw_sizes": [int(x) for x in raw_sizes if int(x) in sizes],
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


#: column titles of the zero-shot metrics
_METRIC_TITLES = {"mIoU-seen": "seen", "mIoU-unseen": "unseen", "hIoU": "hIoU"}


def _accuracy_columns(result: dict) -> List[tuple]:
    """``(title, dataset, metric)`` per accuracy column: mIoU of every dataset, then seen, unseen
    and hIoU of the datasets any row reports them for."""
    cols = []
    for d in result["datasets"]:
        cols.append((f"mIoU {d}", d, "mIoU"))
        for m, title in _METRIC_TITLES.items():
            if any(m in r.get("metrics", {}).get(d, {}) for r in result["rows"]):
                cols.append((f"{title} {d}", d, m))
    return cols


def _accuracy_cell(r: dict, d: str, m: str, std: bool) -> str:
    metrics = r.get("metrics") or {d_: {"mIoU": v} for d_, v in r["miou"].items()}
    cell = _fmt(metrics.get(d, {}).get(m), ".2f")
    sd = (r.get("metrics_std") or {}).get(d, {}).get(m)
    if std and sd is not None and cell != "-":
        cell += f" ± {sd:.2f}"
    return cell


def _speed_columns(result: dict) -> List[tuple]:
    """``(title, size, key, spec)`` of the sizes measured beyond the first."""
    return [
        (f"{title} @{s}", str(s), key, spec)
        for s in result["meta"].get("sizes", [result["meta"]["size"]])[1:]
        for title, key, spec in (
            ("GMACs", "gflops_per_image", ".2f"),
            ("latency (ms)", "latency_ms", ".1f"),
            ("images/s", "images_per_s", ".2f"),
        )
    ]


def _table(result: dict, std: bool = True) -> List[List[str]]:
    acc = _accuracy_columns(result)
    speed = _speed_columns(result)
    header = [c[0] for c in COLUMNS] + [c[0] for c in speed] + [c[0] for c in acc]
    if any(r.get("trained") for r in result["rows"]):
        header.append("seeds")
    body = []
    for r in result["rows"]:
        line = [_fmt(r.get(key), spec) for _, key, spec in COLUMNS]
        line += [_fmt(r.get("speed", {}).get(s, {}).get(k), spec) for _, s, k, spec in speed]
        line += [_accuracy_cell(r, d, m, std) for _, d, m in acc]
        if "seeds" in header:
            line.append(str(len(r["seeds"])) if r.get("trained") else "-")
        body.append(line)
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
    sizes = m.get("sizes", [m["size"]])
    lines += [
        "",
        "Speed: " + ", ".join(f"{s}x{s}" for s in sizes) + f" images (unmarked columns: "
        f"{m['size']}x{m['size']}, columns @N: NxN), batch {m['batch_size']}"
        + (", after each config's test-time resize" if m["test_resize"] else "")
        + (
            " (not at " + ", ".join(f"{s}x{s}" for s in m["raw_sizes"]) + ": fed as they are)"
            if m["test_resize"] and m.get("raw_sizes")
            else ""
        )
        + f", {m['statistic']} (iters={m['iters']}, warmup={m['warmup']}), {where}, torch "
        f"{m['torch']}, {m['torch_threads']} threads. {m['flop_convention']}. mIoU: each "
        "segmenter's own evaluation (Trainer.test, detectron2's SemSegEvaluator; seen / unseen "
        "mIoU and hIoU: ZeroShotSemSegEvaluator), read from its inference/results.json; trained "
        "rows: mean ± sample std over the seeds' runs.",
    ]
    return "\n".join(lines) + "\n"


def _csv(result: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(_table(result, std=False))
    return buf.getvalue()


def plot_comparison(result: dict, path: str) -> None:
    """Accuracy against images/s (log x) at the first size: one panel per dataset (mIoU), and
    one of unseen mIoU per dataset with a seen/unseen split; one labelled point per segmenter
    evaluated on it; without any accuracy, GMACs against images/s. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, m) for _, d, m in _accuracy_columns(result) if m in ("mIoU", "mIoU-unseen")]
    panels = panels or [(None, "gflops_per_image")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (dataset, what) in zip(axes[0], panels):
        for r in result["rows"]:
            if dataset is None:
                y = r.get(what)
            else:
                metrics = r.get("metrics") or {d: {"mIoU": v} for d, v in r["miou"].items()}
                y = metrics.get(dataset, {}).get(what)
            x = r.get("images_per_s")
            if x is None or y is None or not x > 0:
                continue
            ax.scatter([x], [y], s=36)
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel(f"images/s ({result['meta']['size']}x{result['meta']['size']}, log scale)")
        ax.set_ylabel("GMACs / image" if dataset is None else what)
        ax.set_title(
            "no accuracy available: cost only" if dataset is None else f"{dataset}: {what}"
        )
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
