"""Helpers for the processes that detectron2's ``launch`` starts (one per GPU, or per CPU
process with gloo when there is no CUDA): what the launch will run, said once before it starts,
and "local rank 0 first" for work that downloads (timm's and open_clip's weights)."""

import os
from typing import Callable, Optional, TypeVar

import torch
from detectron2.utils import comm

from .errors import ResourceError

__all__ = ["describe_launch", "local_rank_zero_first"]

T = TypeVar("T")


def describe_launch(num_processes: int, num_machines: int = 1) -> Optional[str]:
    """The one-line message to print before ``launch(..., num_processes, num_machines)``, or
    None when there is nothing to say (one process, or CUDA with enough GPUs).

    Raises:
        ResourceError: CUDA is there but has fewer GPUs than ``num_processes`` (detectron2 would
            fail an ``assert`` in every process).
    """
    if num_processes < 1:
        raise ResourceError(f"--num-gpus {num_processes}: must be at least 1")
    if torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if num_processes > visible:
            raise ResourceError(
                f"--num-gpus {num_processes}: only {visible} CUDA device(s) visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
            )
        return None
    if num_processes * num_machines == 1:
        return None
    msg = (
        f"no CUDA: --num-gpus {num_processes} runs {num_processes} CPU process(es) "
        f"with gloo on this machine"
    )
    if num_machines > 1:
        msg += f" ({num_processes * num_machines} in all on {num_machines} machines)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and num_processes > cores:
        msg += (
            f"; warning: more processes than the {cores} CPU core(s) here, each runs slower "
            f"(the result is that of {num_processes * num_machines} processes all the same)"
        )
    return msg


def local_rank_zero_first(fn: Callable[[], T]) -> T:
    """``fn()`` in every process, local rank 0 of each machine first, so that a download (into
    a cache shared by the processes of a machine) happens once; the others then read the cache.
    An error of local rank 0 is raised after the barrier, so that no process waits forever (the
    others then fail the same way on their own, and the launcher prints the error once)."""
    if comm.get_world_size() == 1:
        return fn()
    result, error = None, None
    first = comm.get_local_rank() == 0
    if first:
        try:
            result = fn()
        except Exception as e:  # re-raised after the barrier
            error = e
    comm.synchronize()
    if error is not None:
        raise error
    return result if first else fn()
