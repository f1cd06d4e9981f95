"""Configs: every YAML loads and builds; unknown keys fail; no declared key is dead."""

import glob
import os
import re
import tokenize

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from clipdistill.config import add_clipdistill_config
from clipdistill.modeling.segmenter import OpenVocabSegmenter
from common import CONFIGS, REPO, TINY_OPTS, TINY_OVSEG_OPTS, TINY_SAN_OPTS, tiny_cfg

ALL_CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_builds(path):
    # Architecture as configured, but weights made offline (no download in tests): the timm
    # backbone randomly initialised and the teacher replaced by the tiny toy CLIP.
    opts = ["MODEL.TIMM.NAME", get_cfg_value(path, "MODEL.TIMM.NAME")]
    if get_cfg_value(path, "MODEL.META_ARCHITECTURE") == "SAN":
        opts += TINY_SAN_OPTS
    if get_cfg_value(path, "MODEL.META_ARCHITECTURE") == "OVSeg":
        opts += TINY_OVSEG_OPTS
    cfg = tiny_cfg(*opts, config_file=path)
    model = build_model(cfg)
    assert isinstance(model, OpenVocabSegmenter)
    assert sum(p.numel() for p in model.parameters()) > 0
    if cfg.DATASETS.TRAIN:  # a config that trains has something to train
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


def _code_without_strings(path):
    """The source of ``path`` with string literals and comments removed (an error message that
    names a key does not read it)."""
    with open(path, "rb") as f:
        tokens = [
            t
            for t in tokenize.tokenize(f.readline)
            if t.type not in (tokenize.STRING, tokenize.COMMENT)
            and not t.type == getattr(tokenize, "FSTRING_START", -1)
        ]
    return " ".join(t.string for t in tokens if t.string.strip())


def _read_keys(sources):
    """Full dotted keys read in ``sources``: ``cfg.A.B.C`` directly, or ``x.C`` where
    ``x = cfg.A.B`` (a local alias of a config node)."""
    attr = r"[A-Z][A-Z0-9_]*"
    read = set()
    for src in sources:
        chain = re.compile(rf"\b(\w+)((?:\s*\.\s*{attr})+)")
        aliases = {}
        for m in re.finditer(rf"\b(\w+)\s*=\s*\w+((?:\s*\.\s*{attr})+)", src):
            aliases[m.group(1)] = re.sub(r"\s", "", m.group(2)).lstrip(".")
        for m in chain.finditer(src):
            head, path = m.group(1), re.sub(r"\s", "", m.group(2)).lstrip(".")
            if head in aliases:
                path = aliases[head] + "." + path
            parts = path.split(".")
            for i in range(1, len(parts) + 1):
                read.add(".".join(parts[:i]))
    return read


def test_no_dead_config_keys():
    """Every key added by add_clipdistill_config is read somewhere in the package, by its full
    dotted path (directly, or through a local alias of its parent node)."""
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
    sources = [
        _code_without_strings(path)
        for path in glob.glob(os.path.join(REPO, "clipdistill", "**", "*.py"), recursive=True)
        if not path.endswith("config.py")
    ]
    read = _read_keys(sources)
    dead = sorted(key for key in added if key not in read)
    assert not dead, f"declared but never read: {dead}"


def test_dead_key_check_matches_full_paths():
    # a leaf that exists elsewhere (INPUT.CROP.ENABLED) does not make X.Y.ENABLED read, and a
    # key named in an error string is not read
    src = _code_without_strings_from_text(
        "x = cfg.INPUT.CROP.ENABLED\n"
        "t = cfg.MODEL.CLIPDISTILL.TEACHER\n"
        "t.NAME\n"
        "raise ValueError('MODEL.CLIPDISTILL.TEACHER.WEIGHTS is wrong')\n"
    )
    read = _read_keys([src])
    assert "INPUT.CROP.ENABLED" in read and "MODEL.CLIPDISTILL.TEACHER.NAME" in read
    assert "MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED" not in read
    assert "MODEL.CLIPDISTILL.TEACHER.WEIGHTS" not in read


def _code_without_strings_from_text(text):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(text)
    try:
        return _code_without_strings(f.name)
    finally:
        os.remove(f.name)


def test_tiny_opts_are_valid_keys():
    assert len(TINY_OPTS) % 2 == 0
    tiny_cfg()
