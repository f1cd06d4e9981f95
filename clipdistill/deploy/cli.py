"""Command-line helpers shared by the deployment tools (demo, export, web demo)."""

import argparse
import functools
import logging
import sys
from typing import FrozenSet, List, Optional, Sequence, Tuple

from ..utils.cli import add_debug_argument
from ..utils.errors import ConfigError

__all__ = [
    "split_config_overrides",
    "add_config_arguments",
    "config_parser",
    "check_list_options",
    "load_cfg",
]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def config_keys() -> FrozenSet[str]:
    """Every key of the clipdistill config (``MODEL.WEIGHTS``, ``OUTPUT_DIR``, ...)."""
    from detectron2.config import CfgNode, get_cfg

    from clipdistill.config import add_clipdistill_config

    cfg = get_cfg()
    add_clipdistill_config(cfg)
    keys = set()

    def walk(node, prefix):
        for k, v in node.items():
            keys.add(prefix + k)
            if isinstance(v, CfgNode):
                walk(v, prefix + k + ".")

    walk(cfg, "")
    return frozenset(keys)


def split_config_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split ``argv`` into ``(arguments, KEY VALUE overrides)``: the overrides are everything
    after ``--opts`` (as in detectron2's demo), so any word can be a class name."""
    argv = list(argv)
    if "--opts" in argv:
        i = argv.index("--opts")
        return argv[:i], argv[i + 1 :]
    return argv, []


def config_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A tool's parser: description and epilog from its module docstring ``doc``, plus
    ``--config-file``, ``--opts`` (``add_config_arguments``) and ``--debug``."""
    lines = doc.splitlines()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=lines[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(lines[1:]),
    )
    add_config_arguments(parser)
    add_debug_argument(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, last on the command line: --opts MODEL.WEIGHTS "
        "out/model_final.pth",
    )


def _check_no_overrides_in(name: str, values: Optional[Sequence[str]]) -> None:
    """A dotted config key in a list option (``--class-names cat MODEL.WEIGHTS m.pth``) is an
    override given without ``--opts``: an error rather than a class called "MODEL.WEIGHTS"."""
    keys = config_keys()
    for v in values or ():
        if isinstance(v, str) and v in keys:
            if "." in v:
                raise ConfigError(
                    f"{name}: {v!r} is a config key; config overrides go last, after --opts "
                    f"(... --opts {v} VALUE)"
                )
            logger.warning(
                f"{name}: {v!r} is used as a name, though it is also a config key (config "
                "overrides go after --opts)"
            )


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """``parser.parse_args`` with the ``KEY VALUE`` overrides after ``--opts`` in ``args.opts``.

    Raises:
        ConfigError: a list option holds a dotted config key (an override without ``--opts``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args_part, opts = split_config_overrides(argv)
    args = parser.parse_args(args_part)
    args.opts = list(opts)
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def check_list_options(args, *names: str) -> None:
    """``_check_no_overrides_in`` for the list options ``names`` of ``args`` (e.g.
    ``"class_names"``); call it inside the tool's error handling."""
    for name in names:
        _check_no_overrides_in("--" + name.replace("_", "-"), getattr(args, name, None))


def load_cfg(args):
    """The config of ``args.config_file`` + ``args.opts`` (errors name the file or the key)."""
    from clipdistill.config import get_clipdistill_cfg

    return get_clipdistill_cfg(args.config_file, args.opts)
