"""Configs: every YAML loads and builds; unknown keys fail; no declared key is dead."""

import glob
import os
import re

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from clipdistill.config import add_clipdistill_config
from common import CONFIGS, REPO, TINY_OPTS, tiny_cfg

ALL_CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_builds(path):
    # Architecture as configured, but weights made offline (no download in tests): the timm
    # backbone randomly initialised and the teacher replaced by the tiny toy CLIP.
    cfg = tiny_cfg("MODEL.TIMM.NAME", get_cfg_value(path, "MODEL.TIMM.NAME"), config_file=path)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


def get_cfg_value(path, key):
    cfg = get_cfg()
    add_clipdistill_config(cfg)
    cfg.merge_from_file(path)
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(KeyError, match="unknown config key MODEL.CLIPDISTILL.LOSS.NOT_A_KEY"):
        tiny_cfg("MODEL.CLIPDISTILL.LOSS.NOT_A_KEY", "1")


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{CONFIGS}/voc_toy.yaml"\nMODEL:\n  TIMM:\n    NAMEE: x\n')
    with pytest.raises(KeyError, match=r"bad\.yaml.*MODEL\.TIMM\.NAMEE"):
        tiny_cfg(config_file=str(bad))


def test_no_dead_config_keys():
    """Every key added by add_clipdistill_config is read somewhere in the package."""
    base = get_cfg()
    cfg = get_cfg()
    add_clipdistill_config(cfg)

    def flat(node, prefix=""):
        for k, v in node.items():
            if hasattr(v, "items"):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    added = set(flat(cfg)) - set(flat(base))
    assert added
    sources = ""
    for path in glob.glob(os.path.join(REPO, "clipdistill", "**", "*.py"), recursive=True):
        if not path.endswith("config.py"):
            sources += open(path).read()
    dead = []
    for key in sorted(added):
        parent, leaf = key.rsplit(".", 1)
        # read as cfg.<...>.<PARENT_LEAF>.<LEAF> or via a local alias of the parent node
        if not re.search(rf"\.{leaf}\b", sources):
            dead.append(key)
    assert not dead, f"declared but never read: {dead}"


def test_tiny_opts_are_valid_keys():
    assert len(TINY_OPTS) % 2 == 0
    tiny_cfg()
