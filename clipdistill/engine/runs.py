"""Training and evaluation runs as subprocesses of ``tools/train_net.py`` (the user's own command):
one run per output folder, its settings recorded there, a finished run reused only with the same
settings, its progress (iteration, ETA, evaluation) logged while it runs. Used by the loss table
(``clipdistill.testbed.loss_table``) and the comparison (``clipdistill.benchmark.compare``).
"""

import logging
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..evaluation.zero_shot import ZERO_SHOT_METRICS
from ..utils.errors import DataError
from ..utils.fingerprint import file_sha256
from ..utils.io import claim_generated_folder
from ..utils.process import die_with_parent

__all__ = [
    "RUN_RECORD",
    "METRICS",
    "read_metrics",
    "training_progress",
    "tool_command",
    "run_train_net",
]

logger = logging.getLogger(__name__)

METRICS = ZERO_SHOT_METRICS + ("mIoU",)

#: a run folder's record of the settings it was run with (a finished run is reused only with
#: the same settings)
RUN_RECORD = "loss_table_run.json"


def read_metrics(output_dir: str) -> Optional[Dict[str, float]]:
    """The metrics of a finished run (``inference/sem_seg_evaluation.pth``, loaded weights-only:
    it cannot run code), or None.

    Raises:
        DataError: the file is damaged or holds other than plain numbers (names it).
    """
    path = os.path.join(output_dir, "inference", "sem_seg_evaluation.pth")
    if not os.path.isfile(path):
        return None
    try:
        res = torch.load(path, weights_only=True)
        if not isinstance(res, dict):
            raise TypeError(f"a {type(res).__name__}, not a dict of metrics")
        return {m: float(res.get(m, float("nan"))) for m in METRICS}
    except Exception as e:  # truncated, damaged, objects a weights-only load refuses
        first = (str(e).splitlines() or [""])[0]
        raise DataError(
            f"{path} is unreadable ({type(e).__name__}: {first[:200]}); delete it (or the run "
            f"folder {output_dir}) to run that run again"
        ) from e


#: detectron2's periodic metrics line (``CommonMetricPrinter``): ``eta: 0:01:02  iter: 39  ...``
_METRICS_LINE = re.compile(r"(?:eta: (?P<eta>[0-9:]+)\s+)?iter: (?P<iter>\d+)")


def training_progress(log_text: str) -> Optional[Tuple[int, Optional[str], str]]:
    """The last progress of a ``train_net.py`` log: ``(iterations done, eta or None, stage)``
    with stage ``"training"`` or ``"evaluating"``; None before the first report."""
    matches = list(_METRICS_LINE.finditer(log_text))
    evaluating = "Start inference on" in log_text
    if not matches:
        return (0, None, "evaluating") if evaluating else None
    last = matches[-1]
    return (
        int(last.group("iter")) + 1,
        last.group("eta"),
        "evaluating" if evaluating else "training",
    )


def _follow(proc: subprocess.Popen, log_path: str, label: str, max_iter: Optional[int]) -> None:
    """Wait for ``proc``, logging its progress (iteration, ETA, evaluation) as its log grows."""
    shown = None
    while proc.poll() is None:
        time.sleep(2.0)
        try:
            with open(log_path, errors="replace") as f:
                state = training_progress(f.read())
        except OSError:
            continue
        if state is None or state == shown:
            continue
        shown = state
        done, eta, stage = state
        if stage == "evaluating":
            logger.info(f"{label}: evaluating")
        else:
            total = f"/{max_iter}" if max_iter else ""
            logger.info(f"{label}: iter {done}{total}" + (f", eta {eta}" if eta else ""))


def tool_command(script: str) -> List[str]:
    """The command prefix running the repository's ``tools/<script>`` with this interpreter."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable, os.path.join(repo, "tools", script)]


def run_train_net(
    config_file: str,
    output_dir: str,
    overrides: Sequence[str],
    seed: int,
    num_gpus: int = 1,
    log_path: Optional[str] = None,
    eval_only: bool = False,
    env: Optional[Dict[str, str]] = None,
    label: Optional[str] = None,
    max_iter: Optional[int] = None,
    resume: bool = False,
) -> Dict[str, float]:
    """Train and evaluate one segmenter with ``tools/train_net.py`` (skipped if already done with
    the same settings); ``eval_only``: evaluate only (a training-free segmenter). The run's output
    goes to ``log_path`` (default ``<output_dir>/stdout.txt``); its progress is logged as ``label:
    iter k/max_iter, eta ...`` while it runs.

    Raises:
        DataError: ``output_dir`` holds a run with other settings (config content, overrides,
            seed, eval-only), or a finished run without a record of them.
    """
    record = {
        "config_sha256": file_sha256(config_file) if os.path.isfile(config_file) else config_file,
        "overrides": [str(o) for o in overrides],
        "seed": int(seed),
        "eval_only": bool(eval_only),
    }
    done = read_metrics(output_dir)
    if done is not None and not os.path.isfile(os.path.join(output_dir, RUN_RECORD)):
        raise DataError(
            f"{output_dir} holds a finished run without a record of its settings ({RUN_RECORD}, "
            "an earlier version's): delete the folder first (or pass another --output)"
        )
    # records the settings, or raises naming each difference from the recorded ones
    claim_generated_folder(output_dir, RUN_RECORD, record, "train_net.py run", "another --output")
    if done is not None:
        logger.info(f"{output_dir}: already done with the same settings, reusing its results")
        return done
    cmd = [
        *tool_command("train_net.py"),
        "--config-file",
        config_file,
        "--num-gpus",
        str(num_gpus),
        *(["--eval-only"] if eval_only else []),
        *(["--resume"] if resume else []),
        *overrides,
        "SEED",
        str(seed),
        "OUTPUT_DIR",
        output_dir,
    ]
    logger.info("running: " + " ".join(cmd))
    os.makedirs(output_dir, exist_ok=True)
    log_path = log_path or os.path.join(output_dir, "stdout.txt")
    label = label or os.path.basename(os.path.normpath(output_dir))
    logger.info(f"{label}: started (log {log_path})")
    with open(log_path, "w") as log:
        # the run ends with this process, even after a kill -9 (two writers in one folder else)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent()
        )
        try:
            _follow(proc, log_path, label, None if eval_only else max_iter)
        finally:
            if proc.poll() is None:  # interrupted: do not leave the run behind
                proc.kill()
            proc.wait()
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}); log {log_path}:\n{tail}"
        )
    metrics = read_metrics(output_dir)
    if metrics is None:
        raise RuntimeError(f"{output_dir}: training finished without evaluation results")
    return metrics
