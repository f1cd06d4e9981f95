"""How every command-line tool ends: one line for a user error (exit status 2), a traceback for
a bug (exit status 1, Python's default), the traceback of a user error too with ``--debug``.

Used by ``tools/*.py`` and ``datasets/prepare_*.py``::

    def invoke_main(argv=None) -> int:
        parser = default_argument_parser()
        add_debug_argument(parser)
        args = parse_args_allowing_late_options(parser, argv)
        return launch_tool(PROG, main, args)
"""

import argparse
import logging
import sys
from typing import Callable, List, Optional, Sequence

from .errors import is_user_error, user_message

__all__ = [
    "USER_ERROR_EXIT",
    "add_debug_argument",
    "report_error",
    "run_tool",
    "launch_tool",
    "parse_args_allowing_late_options",
]

#: exit status of a user error (argparse uses 2 for a bad command line as well)
USER_ERROR_EXIT = 2


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (by default a user error - bad config value, "
        "missing or damaged file, full disk - is one line and exit status 2)",
    )


def report_error(prog: str, error, code: int = USER_ERROR_EXIT) -> int:
    """Print ``<prog>: error: <one-line message>`` to stderr and return ``code``.

    ``error`` is a message or an exception (``user_message``)."""
    msg = user_message(error) if isinstance(error, BaseException) else str(error)
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    return code


def run_tool(prog: str, fn: Callable[[], Optional[int]], debug: bool = False) -> int:
    """Run ``fn()``; its return value (an int, else 0) is the exit status. A user error is
    reported in one line (exit status 2) unless ``debug``; any other exception propagates."""
    try:
        rc = fn()
    except Exception as e:
        if debug or not is_user_error(e):
            raise
        return report_error(prog, e)
    return rc if isinstance(rc, int) else 0


class _ReportedUserError(Exception):
    """A user error of a single-process run, already printed."""


class _NoUserErrorTraceback(logging.Filter):
    """Drops the traceback from a log record of a user error (detectron2's training loop logs
    "Exception during training:" with the traceback before re-raising): the record keeps the
    one-line message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_user_error(exc):
            record.msg = f"{record.getMessage()} {user_message(exc)}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


#: loggers that log an exception with its traceback before re-raising it
_TRACEBACK_LOGGERS = ("detectron2.engine.train_loop",)


def _guarded_main(prog: str, main: Callable, args) -> None:
    """Runs in every process that detectron2's ``launch`` starts."""
    if not getattr(args, "debug", False):
        for name in _TRACEBACK_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _NoUserErrorTraceback) for f in logger.filters):
                logger.addFilter(_NoUserErrorTraceback())
    try:
        main(args)
    except Exception as e:
        if getattr(args, "debug", False) or not is_user_error(e):
            raise
        from detectron2.utils import comm

        if comm.get_world_size() > 1:
            report_error(f"{prog} (rank {comm.get_rank()})", e)
            sys.exit(USER_ERROR_EXIT)  # the parent sees the exit status and ends the others
        report_error(prog, e)
        raise _ReportedUserError() from e


def launch_tool(prog: str, main: Callable, args) -> int:
    """detectron2's ``launch(main, args.num_gpus, ...)`` with ``run_tool``'s error handling in
    every process. Returns the exit status."""
    from detectron2.engine import launch

    try:
        launch(
            _guarded_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(prog, main, args),
        )
    except _ReportedUserError:
        return USER_ERROR_EXIT
    except Exception as e:
        import torch.multiprocessing as mp

        if isinstance(e, mp.ProcessExitedException) and e.exit_code == USER_ERROR_EXIT:
            return USER_ERROR_EXIT  # a worker printed its one-line error
        if getattr(args, "debug", False) or not is_user_error(e):
            raise
        return report_error(prog, e)
    return 0


def parse_args_allowing_late_options(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """``parser.parse_args`` for detectron2's parser, whose trailing ``opts`` (``KEY VALUE``
    overrides, ``nargs=REMAINDER``) would otherwise swallow options given after them:
    ``train_net.py --config-file c.yaml SOLVER.MAX_ITER 2 --resume`` means ``--resume``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    opts: List[str] = list(getattr(args, "opts", None) or [])
    if not opts:
        return args
    head = argv[: len(argv) - len(opts)]
    moved, rest, i = [], [], 0
    actions = parser._option_string_actions
    while i < len(opts):
        tok = opts[i]
        name = tok.split("=", 1)[0]
        action = actions.get(name) if tok.startswith("-") else None
        if action is None:
            rest.append(tok)
            i += 1
            continue
        nvals = 0 if "=" in tok or action.nargs == 0 else (action.nargs or 1)
        if not isinstance(nvals, int):
            nvals = 1
        moved += opts[i : i + 1 + nvals]
        i += 1 + nvals
    if not moved:
        return args
    return parser.parse_args(head + moved + rest)
