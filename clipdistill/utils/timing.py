"""The timing harness of the benchmark (``clipdistill.benchmark``) and of export
(``clipdistill.deploy.export``): wall time of calls after untimed warm-up calls, CUDA synchronised
around each timed call, summarised by median / min / mean."""

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["time_calls", "time_interleaved", "summarize"]


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable, iters: int, warmup: int, device=None) -> List[float]:
    """Seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones (``device``: the CUDA
    device to synchronise with, if any)."""
    return time_interleaved({"fn": fn}, iters, warmup, device)["fn"]


def time_interleaved(
    fns: Dict[str, Callable], rounds: int, warmup: int, device=None
) -> Dict[str, List[float]]:
    """Seconds per call of each of ``fns``: every one first gets ``warmup`` untimed calls, then
    they are timed in interleaved rounds (one call of each per round, ``rounds`` rounds), so
    that a change in the machine's load during the measurement affects all of them alike."""
    device = torch.device(device) if device is not None else None
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds: Sequence[float]) -> Dict[str, float]:
    """``{"median_ms", "min_ms", "mean_ms"}`` of call times given in seconds."""
    ms = [1000 * s for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "mean_ms": statistics.fmean(ms)}
