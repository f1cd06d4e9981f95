"""Configs: every YAML loads and builds; unknown keys fail; no declared key is dead."""

import contextlib
import glob
import logging
import os
import re
import tokenize

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from clipdistill.config import add_clipdistill_config, get_clipdistill_cfg
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
    """Every key added by add_clipdistill_config is read somewhere in the package or in the
    detectron2 builder it delegates to (DeepLab's ``build_lr_scheduler``), by its full dotted
    path (directly, or through a local alias of its parent node)."""
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
    import detectron2.projects.deeplab.build_solver as deeplab_solver

    sources.append(_code_without_strings(deeplab_solver.__file__))
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


def test_which_clip_is_spelled_one_way():
    """Every config node that names a CLIP holds NAME and WEIGHTS (clipdistill.modeling.clip.
    config); no other spelling of a CLIP's model name or weights is declared."""
    cfg = get_cfg()
    add_clipdistill_config(cfg)
    nodes = {
        "MODEL.CLIPDISTILL.TEACHER": cfg.MODEL.CLIPDISTILL.TEACHER,
        "MODEL.MASKCLIP.CLIP": cfg.MODEL.MASKCLIP.CLIP,
        "MODEL.SAN.CLIP": cfg.MODEL.SAN.CLIP,
        "MODEL.OVSEG.CLIP": cfg.MODEL.OVSEG.CLIP,
        "MODEL.CAR.PROPOSAL_CLIP": cfg.MODEL.CAR.PROPOSAL_CLIP,
        "MODEL.CAR.CLASSIFIER_CLIP": cfg.MODEL.CAR.CLASSIFIER_CLIP,
    }
    for key, node in nodes.items():
        assert {"NAME", "WEIGHTS"} <= set(node), key

    def flat(node, prefix=""):
        for k, v in node.items():
            yield f"{prefix}{k}"
            if hasattr(v, "items"):
                yield from flat(v, f"{prefix}{k}.")

    odd = [k for k in flat(cfg) if re.search(r"CLIP_(MODEL_NAME|PRETRAINED|NAME|WEIGHTS)", k)]
    assert not odd


@contextlib.contextmanager
def _warnings_of(name, caplog):
    """Capture the records of logger ``name`` (detectron2's setup_logger may have stopped the
    "clipdistill" logger from propagating to the root, where caplog listens)."""
    logger = logging.getLogger(name)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger=name):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def test_renamed_keys_load_with_a_warning(tmp_path, caplog):
    """SAN's published CLIP keys (and this project's earlier ones) still load, in a file, in its
    _BASE_ and on the command line, converted to MODEL.SAN.CLIP.* with a warning naming both."""
    base = tmp_path / "base.yaml"
    base.write_text(
        f'_BASE_: "{CONFIGS}/san/san_toy.yaml"\n'
        "MODEL:\n  SAN:\n    CLIP_TEMPLATE_SET: vild\n    CLIP_PRETRAINED_NAME: ''\n"
    )
    child = tmp_path / "child.yaml"  # the old spelling over a base that uses the new one
    child.write_text('_BASE_: "base.yaml"\nMODEL:\n  SAN:\n    CLIP_MODEL_NAME: ViT-B-16\n')
    with _warnings_of("clipdistill.config.compat", caplog):
        cfg = tiny_cfg("MODEL.SAN.CLIP_TEMPLATE_SET", "simple", config_file=str(child))
    assert cfg.MODEL.SAN.CLIP.NAME == "ViT-B-16"
    assert cfg.MODEL.SAN.CLIP.WEIGHTS == ""
    assert cfg.MODEL.SAN.CLIP.TEMPLATES == "simple"  # the command line wins
    text = caplog.text
    for old, new in (
        ("MODEL.SAN.CLIP_MODEL_NAME", "MODEL.SAN.CLIP.NAME"),
        ("MODEL.SAN.CLIP_PRETRAINED_NAME", "MODEL.SAN.CLIP.WEIGHTS"),
        ("MODEL.SAN.CLIP_TEMPLATE_SET", "MODEL.SAN.CLIP.TEMPLATES"),
    ):
        assert f"{old} is now {new}" in text


def test_maskclip_config_of_the_earlier_layout_keeps_its_clip(tmp_path, caplog):
    """A MaskCLIP config that sets its CLIP under MODEL.CLIPDISTILL.TEACHER (the layout before
    MODEL.MASKCLIP.CLIP existed) loads with that CLIP and a warning; a config that sets
    MODEL.MASKCLIP.CLIP is left alone."""
    old = tmp_path / "old.yaml"
    old.write_text(
        f'_BASE_: "{CONFIGS}/maskclip/Base-MaskCLIP.yaml"\n'
        "MODEL:\n  CLIPDISTILL:\n    TEACHER:\n      NAME: ViT-T-16-toy\n      WEIGHTS: ''\n"
        "      DENSE_METHOD: sclip\n"
    )
    with _warnings_of("clipdistill.config.compat", caplog):
        cfg = get_clipdistill_cfg(str(old))
    clip = cfg.MODEL.MASKCLIP.CLIP
    assert (clip.NAME, clip.WEIGHTS, clip.DENSE_METHOD) == ("ViT-T-16-toy", "", "sclip")
    assert "MODEL.MASKCLIP.CLIP" in caplog.text
    new = get_clipdistill_cfg(str(old), ["MODEL.MASKCLIP.CLIP.DENSE_METHOD", "naclip"])
    assert new.MODEL.MASKCLIP.CLIP.NAME == "ViT-B-16"  # its own CLIP, the teacher's ignored


def test_a_config_file_cannot_run_code(tmp_path):
    """Configs are read with safe YAML: a Python tag (``!!python/object/apply``) is a ConfigError
    naming the file, not a call; also through a _BASE_ file."""
    from clipdistill.config import get_clipdistill_cfg
    from clipdistill.utils.errors import ConfigError

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"SEED: !!python/object/apply:os.mkdir ['{marker}']\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: evil.yaml\nSEED: 3\n")
    for path in (evil, child):
        with pytest.raises(ConfigError, match="evil.yaml"):
            get_clipdistill_cfg(str(path))
        assert not marker.exists()
