"""Child processes that end with their parent.

A ``kill -9`` of a tool leaves nothing to clean up after it, so its children (the ranks that
``--num-gpus N`` starts, ``loss_table.py``'s ``train_net.py`` runs) would go on writing into
the same output folder as the next run. On Linux each child asks the kernel for a parent-death
signal (``prctl(PR_SET_PDEATHSIG)``): when the process that started it dies, however it dies,
the child is killed too. The request is made in the child, and the child then checks that its
parent is still the one that started it (the parent may have died before the request).

* ``subprocess.Popen(cmd, preexec_fn=die_with_parent())`` for a child command;
* ``set_parent_death_signal(parent_pid)`` first thing in a process started with
  ``multiprocessing`` (``utils/cli.launch_tool`` does it in every rank).

Elsewhere (macOS, Windows) both do nothing.
"""

import ctypes
import os
import signal
import sys
from typing import Callable, Optional

__all__ = ["set_parent_death_signal", "die_with_parent"]

_PR_SET_PDEATHSIG = 1


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


#: resolved once, in the parent: a ``preexec_fn`` runs between fork and exec, where loading a
#: library is not safe
_PRCTL = _load_prctl()


def set_parent_death_signal(
    parent_pid: Optional[int] = None, sig: int = signal.SIGKILL
) -> bool:
    """Have this process receive ``sig`` when its parent dies. With ``parent_pid`` (the pid of
    the process that started this one), a parent already gone (this process re-parented before
    the request) sends ``sig`` now. Returns False where the platform has no such signal."""
    if _PRCTL is None:
        return False
    if _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    return True


def die_with_parent(sig: int = signal.SIGKILL) -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process (the
    thread calling ``Popen``, which must wait for the child) dies. None where unsupported."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        set_parent_death_signal(parent, sig)

    return preexec
