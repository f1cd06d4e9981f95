"""Atomic file writes: the one place where clipdistill writes to a temporary name and renames."""

import contextlib
import os
import tempfile
from typing import Iterator

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary file lives in the same folder (so ``os.replace`` is a rename on one file
    system), starts with ``.tmp-`` and keeps ``path``'s extension (writers that pick a format by
    extension still work). On any exception the temporary file is removed and ``path`` is left as
    it was: a reader never sees a half-written file. Parent folders are created.

    Args:
        path: the final file.
        suffix: the temporary file's suffix; default: ``path``'s extension.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if not suffix:
        suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a normal write would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
