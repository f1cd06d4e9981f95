"""Peak memory of a block of code: CUDA's allocator statistics, or the process's resident-set
high-water mark on the CPU (Linux ``/proc``)."""

import contextlib
import ctypes
import gc
import threading
import time
from typing import Optional

import torch

__all__ = ["PeakMemory", "trim_cpu_memory"]


def _read_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def trim_cpu_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap to the OS (glibc)


class PeakMemory:
    """Peak memory of the code inside the ``with`` block, in MiB, above the level at entry.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the resident-set high-water
    mark (Linux ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``); where that reset is
    not allowed, a 2 ms sampling thread of ``VmRSS``. CPU numbers include allocator caching and
    one-off buffers (oneDNN primitives, thread pools), so they are upper bounds of activations.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.mb: float = float("nan")
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda.max_memory_allocated"
            return self
        trim_cpu_memory()
        self._base = _read_status_kb("VmRSS") or 0
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM (reset via /proc/self/clear_refs) - VmRSS at start"
        except OSError:
            self.method = "max sampled VmRSS (2 ms) - VmRSS at start"
            self._peak, self._stop = self._base, threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, _read_status_kb("VmRSS") or 0)
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.mb = peak / 2**20
            return False
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak_kb = self._peak
        else:
            peak_kb = _read_status_kb("VmHWM") or 0
        self.mb = max(0, peak_kb - self._base) / 1024
        return False
