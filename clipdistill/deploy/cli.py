"""Command-line helpers shared by the deployment tools (demo, export, web demo)."""

import argparse
import functools
import sys
from typing import FrozenSet, List, Optional, Sequence, Tuple

__all__ = ["split_config_overrides", "add_config_arguments", "load_cfg", "fail"]


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
    """Split ``argv`` into ``(arguments, KEY VALUE overrides)``.

    Overrides start at ``--opts`` or at the first token that is a config key (``MODEL.WEIGHTS``,
    ``OUTPUT_DIR``...), so that they may follow a list option: ``--class-names cat dog
    MODEL.WEIGHTS m.pth`` gives class names ``cat dog`` and overrides ``MODEL.WEIGHTS m.pth``.
    (A class name spelled exactly like a config key, e.g. ``SEED``, is therefore read as one.)
    """
    argv = list(argv)
    keys = config_keys()
    for i, tok in enumerate(argv):
        if tok == "--opts":
            return argv[:i], argv[i + 1 :]
        if tok in keys:
            return argv[:i], argv[i:]
    return argv, []


def config_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A tool's parser: description and epilog from its module docstring ``doc``, plus
    ``--config-file`` and ``--opts`` (``add_config_arguments``)."""
    lines = doc.splitlines()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=lines[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(lines[1:]),
    )
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS out/model_final.pth (the KEY VALUE pairs may "
        "also simply trail the other arguments)",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """``parser.parse_args`` with trailing ``KEY VALUE`` overrides collected into ``args.opts``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args_part, opts = split_config_overrides(argv)
    args = parser.parse_args(args_part)
    args.opts = list(opts)
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def load_cfg(args):
    """The config of ``args.config_file`` + ``args.opts`` (errors name the file or the key)."""
    from clipdistill.engine.setup import get_clipdistill_cfg

    return get_clipdistill_cfg(args.config_file, args.opts)


#: errors a tool reports as a one-line message (bad config key, missing file, bad vocabulary,
#: mismatching checkpoint: ``CheckpointMismatchError`` is a ``ValueError``)
USER_ERRORS = (FileNotFoundError, KeyError, ValueError)


def fail(prog: str, error, code: int = 2) -> int:
    """Print ``prog: error: <message>`` to stderr (no traceback) and return ``code``.

    ``error`` is a message or an exception (a ``KeyError``'s message is shown without quotes).
    """
    if isinstance(error, KeyError) and error.args:
        error = error.args[0]
    print(f"{prog}: error: {error}", file=sys.stderr)
    return code
