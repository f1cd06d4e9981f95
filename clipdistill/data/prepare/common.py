"""Helpers shared by the dataset preparation scripts (``datasets/prepare_*.py``).

Every converter follows the same rules:

- inputs are read with :func:`read_label` / :func:`read_image`, which raise :class:`PrepareError`
  naming the file when it is missing or cannot be decoded (e.g. a truncated PNG);
- outputs are written with ``clipdistill.utils.io.atomic_save_image`` (temporary file in the same
  folder, then ``os.replace``), so an interrupted run never leaves a half-written output under
  its final name;
- a re-run skips outputs that already exist and decode (:func:`output_is_complete`), and
  regenerates the others; stale temporary files of an interrupted run are removed
  (``clipdistill.utils.io.remove_stale_temps``);
- a missing or damaged input is one line on stderr and exit status 2 (``--debug``: traceback).
"""

import argparse
import logging
import multiprocessing
import os
import sys
from typing import Callable, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...utils.cli import add_debug_argument, run_tool
from ...utils.errors import UserError

__all__ = [
    "PrepareError",
    "output_is_complete",
    "read_image",
    "read_label",
    "read_id_list",
    "make_lut",
    "run_jobs",
    "base_argument_parser",
]

logger = logging.getLogger(__name__)


class PrepareError(UserError, RuntimeError):
    """A missing or damaged input (the message names the file), or an inconsistent dataset."""


def output_is_complete(path: str) -> bool:
    """True when ``path`` exists and decodes (PNG: all chunk CRCs; others: full decode)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()
            else:
                im.load()
    except Exception:
        return False
    return True


def _open(path: str, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise PrepareError(f"Missing {what}: {path}")
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        raise PrepareError(f"Damaged or unreadable {what}: {path} ({e})") from e
    return im


def read_label(path: str, what: str = "label map") -> np.ndarray:
    """Read a single-channel label image (8-bit ``L``/``P`` or 16-bit) without conversion.

    Palette PNGs give their indices, as in detectron2's evaluator. Raises :class:`PrepareError`
    naming ``path`` when it is missing, cannot be decoded, or is not single-channel.
    """
    with _open(path, what) as im:
        if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
            raise PrepareError(f"Expected a single-channel {what}, got mode {im.mode}: {path}")
        return np.asarray(im)


def read_image(path: str, mode: Optional[str] = None, what: str = "image") -> np.ndarray:
    """Read an image as an array (optionally converted to ``mode``, e.g. ``"RGB"``)."""
    with _open(path, what) as im:
        if mode is not None and im.mode != mode:
            im = im.convert(mode)
        return np.asarray(im)


def read_id_list(path: str, what: str = "id list") -> List[str]:
    """Read a list of file stems (one a line, blank lines ignored)."""
    if not os.path.isfile(path):
        raise PrepareError(f"Missing {what}: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def make_lut(mapping: dict, size: int, fill: int, dtype=np.uint8) -> np.ndarray:
    """A lookup table ``lut[src] = dst`` of length ``size``; unmapped entries are ``fill``."""
    lut = np.full(size, fill, dtype=dtype)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def run_jobs(
    fn: Callable, jobs: Sequence, desc: str, workers: int = 1, chunksize: int = 16
) -> List:
    """Run ``fn(job)`` for every job with a tqdm bar, in ``workers`` processes if > 1.

    The first exception (e.g. :class:`PrepareError`) stops the run and is re-raised.
    Returns the results in completion order.
    """
    results = []
    if workers <= 1 or len(jobs) < 2:
        for job in tqdm(jobs, desc=desc, unit="file"):
            results.append(fn(job))
        return results
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        it = pool.imap_unordered(fn, jobs, chunksize=chunksize)
        for r in tqdm(it, total=len(jobs), desc=desc, unit="file"):
            results.append(r)
    return results


def base_argument_parser(description: str, default_root: str) -> argparse.ArgumentParser:
    """``--root`` (default: the datasets root) and ``--workers``, shared by every script."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root",
        default=default_root,
        help="datasets root (default: $DETECTRON2_DATASETS or ./datasets; now %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes (default: %(default)s)",
    )
    add_debug_argument(parser)
    return parser


def run_cli(prepare_fn, *args, debug: bool = False) -> int:
    """Run a prepare function for a CLI: print its summary and return 0, or print a user error
    (e.g. the ``PrepareError`` naming the file at fault) in one line and return 2
    (``clipdistill.utils.cli.run_tool``; ``debug``: raise it with its traceback)."""

    def run():
        print(prepare_fn(*args))

    return run_tool(os.path.basename(sys.argv[0]) or "prepare", run, debug=debug)
