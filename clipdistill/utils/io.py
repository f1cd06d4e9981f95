"""Atomic file writes: the one way clipdistill writes an output file.

Every output (checkpoint, manifest, shard, label map, overlay, results table...) is written to a
temporary file in the destination folder and renamed over the final name with ``os.replace``, so a
kill at any moment leaves either the old file or the new one, never a truncated one. On failure
the temporary file is removed; a full disk or an unwritable folder raises :class:`OutputError`
naming the file and its folder.

Temporary names are ``.<final name>.<random>.tmp`` (plus the final extension when a library needs
it, e.g. OpenCV's video writer): hidden, unique per writer (concurrent processes never share one),
and recognised by :func:`is_temp_name` / :func:`remove_stale_temps`.
"""

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
from typing import IO, Any, Iterator, Optional, Union

import numpy as np
from PIL import Image

from .errors import DataError, OutputError

__all__ = [
    "atomic_write",
    "atomic_path",
    "atomic_save_json",
    "atomic_save_image",
    "default_file_mode",
    "is_temp_name",
    "remove_stale_temps",
    "ensure_writable_dir",
    "claim_generated_folder",
    "storage_error_of",
]

logger = logging.getLogger(__name__)

# ours (".name.abc123.tmp", ".name.abc123.tmp.mp4"), and those of earlier versions (".name.tmp",
# ".tmp-*")
_TEMP_RE = re.compile(r"^\.(tmp-.+|.+\.tmp(\.[A-Za-z0-9]{1,8})?)$")

#: errors of the storage rather than of the program: reported as ``OutputError`` naming the folder
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large (file-size limit reached)",
    errno.ENOTDIR: "a component of the path is not a folder",
    errno.ENOENT: "the folder does not exist",
}


def default_file_mode() -> int:
    """Permissions of a newly created regular file under the current umask (``mkstemp`` creates
    0600 files; outputs are meant to be shared like any file the user writes)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def is_temp_name(name: str) -> bool:
    """True for the base name of a temporary file left by an atomic write."""
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(folder: str) -> int:
    """Delete the temporary files that interrupted writers left in ``folder`` (logged); returns
    how many.

    Call it only when no other process writes into ``folder`` at the same time."""
    if not os.path.isdir(folder):
        return 0
    n = 0
    with os.scandir(folder) as it:
        for entry in it:
            if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
                    n += 1
    if n:
        logger.info("Removed %d stale temporary file(s) of an interrupted write in %s", n, folder)
    return n


def _storage_error(e: OSError, path: str) -> OutputError:
    folder = os.path.dirname(os.path.abspath(path))
    why = _STORAGE_ERRNOS.get(e.errno, e.strerror or str(e))
    return OutputError(e.errno, f"cannot write {path} (folder {folder}): {why}")


def storage_error_of(e: BaseException, path: str) -> Optional[OutputError]:
    """An ``OutputError`` naming ``path`` when ``e`` comes from the storage (full disk,
    read-only folder...: see ``_storage_cause``), else None; for writes made by other code
    (detectron2's ``config.yaml``)."""
    cause = _storage_cause(e)
    return None if cause is None else _storage_error(cause, path)


def _storage_cause(e: BaseException):
    """The storage ``OSError`` (full disk, read-only...) behind ``e``, if any: writers such as
    ``torch.save`` re-raise it as another type, with the ``OSError`` as its context."""
    seen = set()
    while e is not None and id(e) not in seen and not isinstance(e, OutputError):
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover  (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, *, keep_extension: bool = False, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; when the block succeeds, the file written
    there replaces ``path`` atomically (after ``fsync``), else it is removed.

    For libraries that want a file name (``safetensors.torch.save_file``, ``cv2.VideoWriter``).
    Missing parent folders are created. ``keep_extension`` ends the temporary name with
    ``path``'s extension (libraries that pick the format from it). ``fsync=False`` skips the
    flush to disk (the file is still complete after a kill; only a power loss could leave it
    short): for bulk outputs whose completeness is checked on the next run.

    Raises:
        OutputError: the folder is missing or read-only, the disk is full, ... (names the file).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = ".tmp" + (os.path.splitext(base)[1] if keep_extension else "")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=suffix, dir=folder)
    except OSError as e:
        raise _storage_error(e, path) from e
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        cause = _storage_cause(e)
        if cause is not None:
            raise _storage_error(cause, path) from e
        raise


@contextlib.contextmanager
def atomic_write(
    path: str, mode: str = "wb", *, encoding: str = None, newline: str = None, fsync: bool = True
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing atomically: ``with atomic_write(p, "w") as f: f.write(...)``.

    The data go to a temporary file in the same folder, which replaces ``path`` (``os.replace``)
    only when the block ends without an exception; on an exception it is removed and ``path`` is
    untouched. ``mode`` is ``"wb"`` or ``"w"`` (text: ``encoding`` defaults to UTF-8). Missing
    parent folders are created. (For a writer that wants a file name, see ``atomic_path``.)

    Raises:
        OutputError: the folder is missing or read-only, the disk is full, ... (names the file).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()


def atomic_save_json(path: str, obj: Any, *, indent: int = 1, fsync: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path, "w", fsync=fsync) as f:
        json.dump(obj, f, indent=indent)


_IMAGE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


def atomic_save_image(path: str, data: Union[np.ndarray, Image.Image], **save_kwargs) -> None:
    """Save an image or a label map to ``path`` atomically (:func:`atomic_write`, without
    ``fsync``: bulk outputs whose completeness the next run checks).

    Args:
        path (str): final file name; its extension (.png, .tif, .jpg) picks the format.
        data (ndarray or PIL.Image): uint8 (H,W) / (H,W,3) or uint16 (H,W) arrays, or an image.
            uint16 arrays are stored as 16-bit (PIL mode ``I;16``), so only PNG/TIFF fit them.
        save_kwargs: passed to ``PIL.Image.save`` (e.g. ``quality`` for JPEG).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in _IMAGE_FORMATS:
        raise ValueError(f"atomic_save_image: unsupported extension {ext!r} for {path}")
    if isinstance(data, np.ndarray):
        if data.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"atomic_save_image: expected uint8 or uint16, got {data.dtype} for {path}"
            )
        image = Image.fromarray(data)
    else:
        image = data
    # no fsync per file (thousands of them): a kill never leaves a partial file, and a file cut
    # short by a power loss fails the next run's completeness check and is regenerated
    with atomic_write(path, fsync=False) as f:
        image.save(f, format=_IMAGE_FORMATS[ext], **save_kwargs)


def ensure_writable_dir(folder: str, what: str = "output folder") -> str:
    """Create ``folder`` if needed and check that a file can be created in it.

    Raises:
        OutputError: it cannot be created or written (names ``what`` and the folder).
    """
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        why = _STORAGE_ERRNOS.get(e.errno, e.strerror or str(e))
        if e.errno == errno.EEXIST or (os.path.exists(folder) and not os.path.isdir(folder)):
            why = "it exists and is not a folder"
        raise OutputError(e.errno, f"cannot write to the {what} {folder}: {why}") from e
    return folder


def claim_generated_folder(
    folder: str, record_name: str, params: dict, what: str, elsewhere: str = "another --root"
) -> None:
    """Record in ``folder/record_name`` the arguments a generator fills ``folder`` with (creating
    the folder), so that re-running with other arguments is an error rather than a mix of two
    datasets; re-running with the same arguments (to complete an interrupted run) is allowed.

    Raises:
        DataError: ``folder`` was generated with other arguments (naming each difference).
    """
    record = os.path.join(folder, record_name)
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            try:
                old = json.load(f)
            except ValueError:  # a damaged record: rewritten below
                old = None
        if isinstance(old, dict) and old != params:
            changed = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
            raise DataError(
                f"{folder} holds a {what} generated with other arguments ({changed}, as "
                f"(there, asked)): delete the folder first (or pass {elsewhere})"
            )
    os.makedirs(folder, exist_ok=True)
    atomic_save_json(record, params)
