"""Errors a user can act on, told apart from bugs.

A *user error* is one its user fixes without touching the code: a bad config key or value, a
missing or damaged input file, a checkpoint that does not match the config, a full disk or an
unwritable output folder. The command-line tools print it as one line, ``<tool>: error:
<message>``, and exit with status 2 (``clipdistill.utils.cli``); anything else is a bug and keeps
its traceback (exit status 1). ``--debug`` shows the traceback of a user error too.

Code raising a user error raises a :class:`UserError` subclass. Each also derives from the
built-in type that callers already expect (``ValueError``, ``KeyError``, ``OSError``), so
``except ValueError`` keeps working.
"""

import errno
from typing import Optional

__all__ = [
    "UserError",
    "ConfigError",
    "ConfigKeyError",
    "DataError",
    "OutputError",
    "ResourceError",
    "is_user_error",
    "user_message",
]


class UserError(Exception):
    """An error its user can fix; its message names the key, file or value at fault."""


class ConfigError(UserError, ValueError):
    """A config key, or a value given on the command line (class names...), that cannot work;
    the message names the key or the value."""


class ConfigKeyError(ConfigError, KeyError):
    """An unknown config key, or a dataset name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ResourceError(UserError, RuntimeError):
    """Something the config names cannot be obtained, e.g. weights that cannot be downloaded
    (the message names the key and how to provide it)."""


class DataError(UserError, ValueError):
    """A dataset or input file is missing, damaged or inconsistent (the message names it)."""


class OutputError(UserError, OSError):
    """An output cannot be written: full disk, read-only or missing folder (names the file)."""

    def __str__(self) -> str:
        return self.strerror if self.strerror else super().__str__()


#: OSError numbers that describe the user's storage, not a bug
_USER_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EFBIG,
}


def is_user_error(e: BaseException) -> bool:
    """True for an error the tools report in one line (see the module docstring)."""
    if isinstance(e, UserError):
        return True
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        return True
    try:  # detectron2: an image whose size differs from its dataset dict
        from detectron2.data.detection_utils import SizeMismatchError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, SizeMismatchError)


_WORKER_MARK = "Original Traceback (most recent call last):"


def _from_worker_traceback(msg: str) -> Optional[str]:
    """The original message of an exception re-raised by a DataLoader worker or a spawned
    process (whose message embeds the worker's formatted traceback)."""
    if _WORKER_MARK not in msg:
        return None
    tail = msg.rsplit(_WORKER_MARK, 1)[1].splitlines()
    # the traceback's frames are indented; the exception line ("module.Type: message") follows
    last_frame = max((i for i, line in enumerate(tail) if line.startswith(" ")), default=-1)
    text = "\n".join(tail[last_frame + 1 :]).strip()
    head, sep, rest = text.partition(": ")
    if sep and " " not in head:  # drop the "module.Type" prefix
        text = rest
    return text or None


def user_message(e: BaseException) -> str:
    """The message of ``e`` on one line (no traceback, no quotes around a ``KeyError``'s)."""
    if isinstance(e, KeyError) and not isinstance(e, ConfigKeyError) and e.args:
        msg = str(e.args[0])
    else:
        msg = str(e)
    msg = _from_worker_traceback(msg) or msg
    if not msg:
        msg = type(e).__name__
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())
