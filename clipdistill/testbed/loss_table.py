"""Which losses carry the open-vocabulary transfer: train students with loss subsets and seeds,
score them on seen / unseen mIoU and hIoU, and tabulate them beside the teacher itself.

Each student run is ``tools/train_net.py`` in a subprocess (the user's own command, with the
variant's loss weights and the seed as overrides); a run whose results exist is not repeated, so
an interrupted table resumes. The teacher row is the same CLIP, with the same dense method, used
directly as a training-free segmenter (the ``MaskCLIP`` META_ARCH on the whole image) on the same
test set, also through ``tools/train_net.py --eval-only``.
"""

import itertools
import logging
import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from ..engine.runs import METRICS, read_metrics, tool_command, training_progress
from ..engine.runs import run_train_net as run_student
from ..utils.errors import ConfigError
from ..utils.io import atomic_save_json, atomic_write
from ..utils.process import die_with_parent

__all__ = [
    "LOSSES",
    "threads_per_run",
    "ANNOTATION_FREE",
    "Variant",
    "pseudo_label_dataset",
    "parse_variant",
    "variant_overrides",
    "run_student",
    "training_progress",
    "read_metrics",
    "aggregate",
    "format_table",
    "TEACHER_OVERRIDES",
    "teacher_overrides",
    "run_table",
]

logger = logging.getLogger(__name__)

#: loss name in a variant -> its weight key under MODEL.CLIPDISTILL.LOSS
LOSSES = {
    "ce": "CE_WEIGHT",
    "global": "GLOBAL_WEIGHT",
    "local": "LOCAL_WEIGHT",
    "dense": "DENSE_WEIGHT",
}
#: config key of the teacher's dense-feature method, for variants "ce+dense@<method>"
DENSE_METHOD_KEY = "MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD"
#: a student config made into its teacher's own zero-shot segmenter, scored on the whole image
#: (``teacher_overrides`` adds the same CLIP and dense method)
TEACHER_OVERRIDES = ("MODEL.META_ARCHITECTURE", "MaskCLIP", "MODEL.MASKCLIP.SLIDE_WINDOW", "0")
#: the keys of the student's teacher (MODEL.CLIPDISTILL.TEACHER) that MaskCLIP's CLIP
#: (MODEL.MASKCLIP.CLIP) takes over for the teacher's row
TEACHER_CLIP_KEYS = ("NAME", "WEIGHTS", "TEMPLATES", "DENSE_METHOD")


#: the variant trained on the teacher's pseudo-labels instead of the human labels
ANNOTATION_FREE = "annotation-free"


@dataclass(frozen=True)
class Variant:
    """A set of losses (``"ce+global+local"``), optionally with a dense method
    (``"ce+dense@sclip"``); ``"config"`` keeps the config file's own weights;
    ``"annotation-free"`` keeps them too but trains on the teacher's own pseudo-labels of the
    training images (``pseudo_labels``: MaskCLIP+'s protocol, no human label at all)."""

    name: str
    losses: Tuple[str, ...]
    dense_method: Optional[str] = None
    pseudo_labels: bool = False


def parse_variant(name: str) -> Variant:
    """``"ce+global"`` -> ``Variant``; unknown losses are an error naming the known ones."""
    if name == "config":
        return Variant(name, ())
    if name == ANNOTATION_FREE:
        return Variant(name, (), pseudo_labels=True)
    body, _, method = name.partition("@")
    losses = tuple(p for p in body.split("+") if p)
    unknown = [p for p in losses if p not in LOSSES]
    if unknown or not losses:
        raise ConfigError(
            f"variant {name!r}: unknown losses {unknown}; use '+'-joined names of {list(LOSSES)} "
            f"(optionally '@<dense method>'), 'config' or '{ANNOTATION_FREE}'"
        )
    if method and "dense" not in losses:
        raise ConfigError(f"variant {name!r}: '@{method}' needs the dense loss")
    return Variant(name, losses, method or None)


def variant_overrides(variant: Variant, cfg) -> List[str]:
    """Config overrides of ``variant``: enabled losses keep the config's weight (1.0 where the
    config has 0), the others get 0."""
    if not variant.losses:  # the config's own weights
        return []
    out = []
    for loss, key in LOSSES.items():
        weight = float(getattr(cfg.MODEL.CLIPDISTILL.LOSS, key))
        if loss in variant.losses:
            weight = weight if weight > 0 else 1.0
        else:
            weight = 0.0
        out += [f"MODEL.CLIPDISTILL.LOSS.{key}", str(weight)]
    if variant.dense_method:  # an unknown method fails in the run, naming the key
        out += [DENSE_METHOD_KEY, variant.dense_method]
    return out


def teacher_overrides(cfg) -> List[str]:
    """Overrides that make the student config ``cfg`` its teacher's own zero-shot segmenter:
    ``TEACHER_OVERRIDES`` on the same CLIP and dense method (``MODEL.CLIPDISTILL.TEACHER.*`` ->
    ``MODEL.MASKCLIP.CLIP.*``), on images resized to the side the student's dense targets are
    computed at (``DENSE_IMAGE_SIZE``), when the student computes them (``DENSE_WEIGHT`` > 0)."""
    t = cfg.MODEL.CLIPDISTILL.TEACHER
    out = list(TEACHER_OVERRIDES)
    for key in TEACHER_CLIP_KEYS:
        out += [f"MODEL.MASKCLIP.CLIP.{key}", str(t[key])]
    if cfg.MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT > 0:
        side = str(t.DENSE_IMAGE_SIZE)
        out += ["INPUT.MIN_SIZE_TEST", side, "INPUT.MAX_SIZE_TEST", side]
    return out


def pseudo_label_dataset(config_file: str, cfg, opts: Sequence[str], env=None) -> str:
    """Label the config's first training dataset with the teacher's own zero-shot segmenter
    (``teacher_overrides``, the teacher row's segmenter) through ``tools/make_pseudo_labels.py``,
    over all the dataset's class names; returns the new dataset's name
    (``<train>_teacher_pseudo``). Labels already written are reused."""
    source = cfg.DATASETS.TRAIN[0]
    name = f"{source}_teacher_pseudo"
    cmd = [
        *tool_command("make_pseudo_labels.py"),
        "--config-file",
        config_file,
        "--dataset",
        source,
        "--name",
        name,
        *opts,
        *teacher_overrides(cfg),
    ]
    logger.info(f"pseudo-labels: {source} -> {name} (the teacher's zero-shot segmentation)")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, preexec_fn=die_with_parent()
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
            f"{proc.stderr[-3000:]}"
        )
    return name


def aggregate(runs: Sequence[Dict[str, float]]) -> Dict[str, Tuple[float, float, int]]:
    """metric -> (mean, sample standard deviation, number of runs)."""
    out = {}
    for m in METRICS:
        values = np.array([r[m] for r in runs if not math.isnan(r[m])], dtype=np.float64)
        if len(values) == 0:
            out[m] = (float("nan"), float("nan"), 0)
        else:
            std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            out[m] = (float(values.mean()), std, len(values))
    return out


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "-"
    if n == 1 or math.isnan(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def format_table(rows: Dict[str, Dict], teacher: Optional[Dict[str, float]] = None) -> str:
    """Markdown table: one row per variant (mean ± std over seeds), the teacher first."""
    lines = []
    if teacher is not None:
        lines.append(
            ["teacher zero-shot (no training)", "-"] + [f"{teacher[m]:.1f}" for m in METRICS]
        )
    for name, agg in rows.items():
        n = max(v[2] for v in agg.values())
        lines.append([name, str(n)] + [_cell(*agg[m]) for m in METRICS])
    return tabulate(
        lines, headers=["segmenter", "seeds", *METRICS], tablefmt="github", disable_numparse=True
    )


#: the full table: each loss with ce, the method as published (ce+global+local), ce+dense (the
#: config's dense method; ``ce+dense@<method>`` picks another for a ViT teacher) and all four
DEFAULT_VARIANTS = (
    "ce",
    "ce+global",
    "ce+local",
    "ce+global+local",
    "ce+dense",
    "ce+global+local+dense",
)


def run_table(
    config_file: str,
    variants: Sequence[str],
    seeds: Sequence[int],
    output_dir: str,
    *,
    teacher: bool = True,
    opts: Sequence[str] = (),
    num_gpus: int = 1,
    jobs: int = 1,
) -> Dict:
    """Run every (variant, seed) student and the teacher, print and write the table.

    ``jobs`` students train at once (subprocesses; with ``jobs > 1`` each gets
    ``threads_per_run`` threads: the cores shared by the runs that can still run beside it, so
    the last run of an odd count gets all of them).

    Outputs in ``output_dir``: ``<variant>/seed<k>/`` (each run's detectron2 output),
    ``teacher/``, ``table.md`` and ``table.json``.

    Returns:
        ``{"teacher": metrics or None, "runs": {variant: {seed: metrics}}, "table": str}``.
    """
    from ..config import get_clipdistill_cfg

    parsed = [parse_variant(v) for v in variants]  # all errors before any run
    cfg = get_clipdistill_cfg(config_file, list(opts))
    teacher_metrics = None
    if teacher:
        out = os.path.join(output_dir, "teacher")
        overrides = list(opts) + teacher_overrides(cfg)
        teacher_metrics = run_student(
            config_file, out, overrides, 0, eval_only=True, label="teacher zero-shot"
        )
        logger.info(f"teacher: {teacher_metrics}")
    tasks = []
    for variant in parsed:
        overrides = list(opts) + variant_overrides(variant, cfg)
        label = variant.name
        on = [n for n, k in LOSSES.items() if getattr(cfg.MODEL.CLIPDISTILL.LOSS, k) > 0]
        if label == "config":  # name the config's own losses
            label = f"config ({'+'.join(on)})"
        if variant.pseudo_labels:
            pseudo = pseudo_label_dataset(config_file, cfg, opts)
            overrides += ["DATASETS.TRAIN", f"('{pseudo}',)"]
            label = f"{ANNOTATION_FREE} ({'+'.join(on)}, teacher pseudo-labels)"
        for seed in seeds:
            out = os.path.join(output_dir, variant.name, f"seed{seed}")
            tasks.append((label, seed, out, overrides))
    started = itertools.count()  # tasks start in order: the k-th start leaves len(tasks)-k

    def run(task):
        label, seed, out, overrides = task
        env = None
        if jobs > 1:
            threads = threads_per_run(len(tasks) - next(started), jobs, os.cpu_count() or 1)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        metrics = run_student(
            config_file,
            out,
            overrides,
            seed,
            num_gpus=num_gpus,
            env=env,
            label=f"{label} seed {seed}",
            max_iter=cfg.SOLVER.MAX_ITER,
        )
        logger.info(f"{label} seed {seed}: {metrics}")
        return metrics

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(run, tasks))
    runs: Dict[str, Dict[int, Dict[str, float]]] = {}
    for (label, seed, _, _), metrics in zip(tasks, results):
        runs.setdefault(label, {})[seed] = metrics
    rows = {name: aggregate(list(by_seed.values())) for name, by_seed in runs.items()}
    table = format_table(rows, teacher_metrics)
    notes = transfer_notes(rows, teacher_metrics)
    text = table + ("\n\n" + "\n".join(notes) if notes else "")
    with atomic_write(os.path.join(output_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    payload = {
        "config_file": config_file,
        "opts": list(opts),
        "seeds": list(seeds),
        "teacher": teacher_metrics,
        "runs": {v: {str(s): m for s, m in by_seed.items()} for v, by_seed in runs.items()},
    }
    atomic_save_json(os.path.join(output_dir, "table.json"), payload, indent=2)
    return {"teacher": teacher_metrics, "runs": runs, "table": text}


def threads_per_run(left: int, jobs: int, cpus: int) -> int:
    """``OMP_NUM_THREADS`` of a run started with ``left`` runs (itself included) not yet started,
    ``jobs`` at once on ``cpus`` cores: ``cpus // min(jobs, left)``, at least 1."""
    return max(1, cpus // max(1, min(jobs, left)))


def transfer_notes(rows: Dict[str, Dict], teacher: Optional[Dict[str, float]]) -> List[str]:
    """The two transfer ratios of every distilled variant: unseen mIoU against the teacher's and
    against the ``ce`` control's."""
    notes = []
    ce = rows.get("ce", {}).get("mIoU-unseen", (float("nan"),))[0]
    for name, agg in rows.items():
        if name == "ce":
            continue
        unseen = agg["mIoU-unseen"][0]
        parts = []
        if teacher is not None and teacher["mIoU-unseen"] > 0:
            parts.append(f"{100 * unseen / teacher['mIoU-unseen']:.0f} % of the teacher's")
        if not math.isnan(ce) and ce > 0:
            parts.append(f"{unseen / ce:.2f}x the ce-only control's")
        note = f"- {name}: unseen mIoU {unseen:.1f}" + (" = " + ", ".join(parts) if parts else "")
        if ce == 0:
            note += "; the ce-only control's is 0.0"
        notes.append(note)
    return notes
