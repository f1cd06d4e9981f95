"""The command line of every tool: one convention for reading it, one for ending.

Reading (every tool that takes a config): detectron2's ``default_argument_parser``
(``--config-file``, ``--num-gpus``, ``--resume``, ``--eval-only``...) plus the tool's options,
with ``KEY VALUE`` config overrides last (``config_argument_parser``, ``parse_config_args``). An
override starts at a config key (``MODEL.WEIGHTS``, ``OUTPUT_DIR``...), so it also ends a list
option (``--class-names cat dog MODEL.WEIGHTS m.pth``), and options may still follow the
overrides (``... SOLVER.MAX_ITER 2 --resume``). The earlier form, overrides after ``--opts``, is
still read (everything after it, as before), with a deprecation message.

Ending: one line for a user error (exit status 2), a traceback for a bug (exit status 1,
Python's default), the traceback of a user error too with ``--debug``. Also used by
``datasets/prepare_*.py``::

    def invoke_main(argv=None) -> int:
        parser = config_argument_parser(PROG, __doc__)
        args = parse_config_args(parser, argv)
        return launch_tool(PROG, main, args)
"""

import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

from .errors import is_user_error, user_message

__all__ = [
    "USER_ERROR_EXIT",
    "add_debug_argument",
    "config_argument_parser",
    "parse_config_args",
    "split_config_overrides",
    "is_config_key",
    "report_error",
    "run_tool",
    "launch_tool",
    "positive_int",
    "non_negative_int",
    "positive_int_list",
    "port_number",
    "unit_float",
]

#: exit status of a user error (argparse uses 2 for a bad command line as well)
USER_ERROR_EXIT = 2


# ------------------------------------------------------------------ option types (argparse
# ``type=``): a bad value is argparse's one line "<prog>: error: argument --x: ..." and status 2


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (>= 1)")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def positive_int_list(text: str) -> List[int]:
    """Comma-separated positive integers (``5,20,59``)."""
    return [positive_int(part.strip()) for part in text.split(",")]


def port_number(text: str) -> int:
    """A TCP port, 1..65535."""
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1..65535)")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (by default a user error - bad config value, "
        "missing or damaged file, full disk - is one line and exit status 2)",
    )


def _write_line(text: str, stream=None) -> None:
    """Write ``text`` + newline to ``stream`` (stderr) in one write: the lines of processes
    sharing a terminal (the ranks of several machines on one host) never run together. Text
    that the stream cannot encode (a lone surrogate from a non-UTF-8 name) is escaped."""
    stream = stream or sys.stderr
    line = text + "\n"
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: captured streams
        fd = None
    if fd is not None:
        stream.flush()
        data = line.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace")
        while data:  # one write for any line shorter than the pipe buffer (4 kB)
            data = data[os.write(fd, data) :]
        return
    stream.write(line)
    stream.flush()


def report_error(prog: str, error, code: int = USER_ERROR_EXIT) -> int:
    """Write ``<prog>: error: <one-line message>`` to stderr (one write, newline included) and
    return ``code``.

    ``error`` is a message or an exception (``user_message``)."""
    msg = user_message(error) if isinstance(error, BaseException) else str(error)
    _write_line(f"{prog}: error: {msg}")
    return code


@contextlib.contextmanager
def _quiet_logging_errors(debug: bool):
    """A log handler that cannot write (the log file on a full disk) makes ``logging`` print
    "--- Logging error ---" and a traceback at every record, burying the one-line error that
    follows: unless ``debug``, such failures are ignored (``logging.raiseExceptions = False``,
    what Python's documentation advises in production); the run's own outputs still fail with
    one line naming the file."""
    old = logging.raiseExceptions
    if not debug:
        logging.raiseExceptions = False
    try:
        yield
    finally:
        logging.raiseExceptions = old


def run_tool(prog: str, fn: Callable[[], Optional[int]], debug: bool = False) -> int:
    """Run ``fn()``; its return value (an int, else 0) is the exit status. A user error is
    reported in one line (exit status 2) unless ``debug``; any other exception propagates."""
    try:
        with _quiet_logging_errors(debug):
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


def _guarded_main(
    prog: str,
    main: Callable,
    args,
    error_dir: Optional[str] = None,
    parent_pid: Optional[int] = None,
) -> None:
    """Runs in every process that detectron2's ``launch`` starts. In a process of a
    multi-process run (``error_dir`` given), a user error is not printed: its one line goes to
    ``error_dir/rank<N>`` and the process exits quietly with status 2; the launching process
    prints each distinct line once (``launch_tool``). A process started by the launcher
    (``parent_pid``, the launcher's pid) ends when the launcher dies, even by ``kill -9``
    (``utils.process.set_parent_death_signal``): no rank goes on writing on its own."""
    if parent_pid is not None:
        from .process import set_parent_death_signal

        set_parent_death_signal(parent_pid)
    if not getattr(args, "debug", False):
        for name in _TRACEBACK_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _NoUserErrorTraceback) for f in logger.filters):
                logger.addFilter(_NoUserErrorTraceback())
    try:
        with _quiet_logging_errors(getattr(args, "debug", False)):
            main(args)
    except Exception as e:
        if getattr(args, "debug", False) or not is_user_error(e):
            raise
        if error_dir is not None:
            from detectron2.utils import comm

            rank = comm.get_rank()
            tmp = os.path.join(error_dir, f".rank{rank}.tmp")
            with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(user_message(e))
            os.replace(tmp, os.path.join(error_dir, f"rank{rank}"))
            sys.exit(USER_ERROR_EXIT)  # the parent sees the exit status and ends the others
        report_error(prog, e)
        raise _ReportedUserError() from e


def _worker_errors(error_dir: str) -> List[str]:
    """The distinct one-line errors the processes wrote, rank 0's first, each prefixed with the
    rank(s) that wrote it (``rank 1: ...``, ``ranks 0, 1: ...``)."""
    files = sorted(
        (n for n in os.listdir(error_dir) if n.startswith("rank")), key=lambda n: int(n[4:])
    )
    by_message = {}  # message -> ranks, in rank order
    for name in files:
        with open(os.path.join(error_dir, name), encoding="utf-8") as f:
            by_message.setdefault(f.read(), []).append(int(name[4:]))
    return [
        f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {msg}"
        for msg, ranks in by_message.items()
    ]


def launch_tool(prog: str, main: Callable, args) -> int:
    """detectron2's ``launch(main, args.num_gpus, ...)`` with ``run_tool``'s error handling in
    every process. Returns the exit status.

    Before starting, it says once what a multi-process launch without CUDA runs (N CPU
    processes with gloo, a warning when N exceeds the cores: ``describe_launch``). A user error
    is printed once however many processes hit it (rank 0's first, then any other message a
    process of this machine wrote), the processes themselves exiting quietly with status 2."""
    from detectron2.engine import launch

    from .distributed import describe_launch

    num_machines = getattr(args, "num_machines", 1)
    try:
        note = describe_launch(args.num_gpus, num_machines)
    except Exception as e:
        if getattr(args, "debug", False) or not is_user_error(e):
            raise
        return report_error(prog, e)
    if note:
        _write_line(f"{prog}: {note}")
    multi = args.num_gpus * num_machines > 1
    with tempfile.TemporaryDirectory(prefix="clipdistill-errors-") as error_dir:
        try:
            launch(
                _guarded_main,
                args.num_gpus,
                num_machines=num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(
                    prog,
                    main,
                    args,
                    error_dir if multi else None,
                    os.getpid() if multi else None,  # the ranks end with this process
                ),
            )
        except _ReportedUserError:
            return USER_ERROR_EXIT
        except Exception as e:
            import torch.multiprocessing as mp

            messages = _worker_errors(error_dir) if multi else []
            if isinstance(e, mp.ProcessExitedException) and e.exit_code == USER_ERROR_EXIT:
                for msg in messages:  # rank 0's, then each other one that differs
                    report_error(prog, msg)
                if not messages:  # ended by a signal before writing: still say something
                    report_error(prog, f"process {e.error_index} exited with status 2")
                return USER_ERROR_EXIT
            if getattr(args, "debug", False) or not is_user_error(e):
                raise
            return report_error(prog, e)
    return 0


# ------------------------------------------------------------------------------------ reading
_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*")


@functools.lru_cache(maxsize=1)
def _top_level_keys() -> Tuple[FrozenSet[str], FrozenSet[str]]:
    """``(nodes, leaves)``: the top-level keys of detectron2's config (clipdistill adds none)."""
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    nodes = frozenset(k for k, v in cfg.items() if isinstance(v, CfgNode))
    return nodes, frozenset(cfg) - nodes


def is_config_key(token: str) -> bool:
    """Whether ``token`` is spelled as a config override's key: ``MODEL.WEIGHTS`` (a dotted key
    under a top-level node of the config) or a top-level leaf such as ``OUTPUT_DIR``."""
    if not _KEY_RE.fullmatch(token):
        return False
    nodes, leaves = _top_level_keys()
    head, dot, _ = token.partition(".")
    return head in nodes if dot else token in leaves


def split_config_overrides(
    argv: Sequence[str], prog: str = "", warn: bool = True
) -> Tuple[List[str], List[str]]:
    """``argv`` -> ``(arguments, KEY VALUE overrides)``: a config key and the word after it are an
    override, wherever they are. With ``--opts`` (the earlier form, a deprecation message on
    stderr), the overrides are everything after it and nothing before it, as they were."""
    argv = list(argv)
    if "--opts" in argv:  # the earlier form, read as before: any word before --opts is a word
        if warn:
            print(
                f"{prog or 'tool'}: warning: --opts is deprecated: give the KEY VALUE config "
                "overrides last on the command line, without --opts (detectron2's convention)",
                file=sys.stderr,
                flush=True,
            )
        i = argv.index("--opts")
        return argv[:i], argv[i + 1 :]
    args: List[str] = []
    opts: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if is_config_key(token):
            opts += argv[i : i + 2]
            i += 2
            continue
        args.append(token)
        i += 1
    return args, opts


def config_argument_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` for the tool ``prog``, with its module docstring
    ``doc`` as description (first line) and epilog (the rest), and ``--debug``."""
    from detectron2.engine import default_argument_parser

    lines = doc.strip().splitlines()
    parser = default_argument_parser(epilog="\n".join(lines[1:]))
    parser.prog = prog
    parser.description = lines[0]
    add_debug_argument(parser)
    return parser


def parse_config_args(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
    require_config: bool = True,
) -> argparse.Namespace:
    """``parser.parse_args`` with the ``KEY VALUE`` overrides (``split_config_overrides``) in
    ``args.opts`` (loading the config checks them: ``get_clipdistill_cfg``); a missing
    ``--config-file`` (when ``require_config``) is a usage error (exit status 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    words, opts = split_config_overrides(argv, parser.prog)
    args = parser.parse_args(words)
    args.opts = opts + list(getattr(args, "opts", None) or [])  # words that name no key last
    if require_config and not getattr(args, "config_file", ""):
        parser.error("the following arguments are required: --config-file")
    return args
