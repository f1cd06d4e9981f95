"""Config validation up front, and property-based fuzzing (hypothesis) of config overrides: any
``KEY VALUE`` gives a config or a ``ConfigError`` naming the key, never another exception."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectron2.config import CfgNode, get_cfg

from clipdistill.config import add_clipdistill_config, get_clipdistill_cfg, validate_config
from clipdistill.utils.errors import ConfigError, UserError
from common import VOC20_TOY_CONFIG, tiny_cfg

TOY = VOC20_TOY_CONFIG


@pytest.mark.parametrize(
    "key, value",
    [
        ("SOLVER.MAX_ITER", "-5"),
        ("SOLVER.MAX_ITER", "0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0"),
        ("SOLVER.IMS_PER_BATCH", "0"),
        ("SOLVER.BASE_LR", "-1.0"),
        ("SOLVER.LR_SCHEDULER_NAME", "'Nope'"),
        ("INPUT.CROP.TYPE", "'sideways'"),
        ("INPUT.MIN_SIZE_TRAIN", "()"),
        ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "3"),  # class 3 of the toy set's 20
    ],
)
def test_training_values_that_cannot_work_are_named(key, value):
    cfg = tiny_cfg(key, value)  # loads: these keys are only read by training
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "="):
        validate_config(cfg, training=True)


@pytest.mark.parametrize(
    "key, value",
    [
        ("INPUT.FORMAT", "XYZ"),
        ("MODEL.DEVICE", "'gpu:0'"),
        ("MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]"),
        ("MODEL.META_ARCHITECTURE", "NoSuchArch"),
        ("DATALOADER.NUM_WORKERS", "-1"),
        ("MODEL.CLIPDISTILL.LOSS.TEMPERATURE", "0.0"),
        ("MODEL.SEM_SEG_HEAD.CONVS_DIM", "0"),
        ("MODEL.SEM_SEG_HEAD.CONVS_DIM", "-8"),
    ],
)
def test_values_that_cannot_work_are_named_by_every_tool(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_cfg(key, value)


def test_all_problems_in_one_message_and_world_size():
    cfg = tiny_cfg("SOLVER.MAX_ITER", "0", "SOLVER.IMS_PER_BATCH", "3")
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, training=True, world_size=2)
    assert "SOLVER.MAX_ITER=0" in str(e.value) and "divisible by the number of processes" in str(
        e.value
    )
    validate_config(tiny_cfg(), training=True, world_size=2)  # the toy config is valid


def _config_keys():
    cfg = get_cfg()
    add_clipdistill_config(cfg)

    def walk(node, prefix=""):
        for k, v in node.items():
            yield prefix + k
            if isinstance(v, CfgNode):
                yield from walk(v, prefix + k + ".")

    return sorted(walk(cfg))


KEYS = _config_keys()
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-5, 600), max_size=4).map(str),
    st.lists(st.text(max_size=4), max_size=3).map(lambda v: str(tuple(v))),
    st.sampled_from(["True", "False", "None", "''", "[]", "()", "{}", "{'a': 1}", "1e999", "nan"]),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(min_size=0, max_size=20))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(KEY, VALUES), min_size=1, max_size=3))
def test_any_override_gives_a_config_or_a_named_error(pairs):
    opts = [x for kv in pairs for x in kv]
    try:
        cfg = get_clipdistill_cfg(TOY, opts)
    except UserError as e:
        assert isinstance(e, ConfigError)
        msg = str(e)
        assert any(k in msg for k, _ in pairs if k) or "config" in msg.lower(), msg
        return
    try:
        validate_config(cfg, training=True, world_size=1)
    except ConfigError as e:
        assert "=" in str(e)


def test_a_student_trained_with_seg_kd_only_is_valid():
    """loss_seg_kd counts as a loss: a student distilled from a segmenter teacher alone passes
    the training checks; with every weight 0 the error names SEG_KD_WEIGHT too."""
    zero = [
        "MODEL.CLIPDISTILL.LOSS.CE_WEIGHT", "0.0",
        "MODEL.CLIPDISTILL.LOSS.GLOBAL_WEIGHT", "0.0",
        "MODEL.CLIPDISTILL.LOSS.LOCAL_WEIGHT", "0.0",
        "MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT", "0.0",
    ]  # fmt: skip
    seg_kd_only = tiny_cfg(
        *zero,
        "MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT", "1.0",
        "MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE", TOY,
    )  # fmt: skip
    validate_config(seg_kd_only, training=True)
    with pytest.raises(ConfigError, match=r"LOSS\.\*_WEIGHT=.*SEG_KD_WEIGHT"):
        validate_config(tiny_cfg(*zero), training=True)
    with pytest.raises(ConfigError, match=r"MODEL\.CLIPDISTILL\.LOSS\.SEG_KD_WEIGHT=-1"):
        tiny_cfg("MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT", "-1.0")


@pytest.mark.parametrize(
    "key, value",
    [
        ("INPUT.RANDOM_FLIP", "'diagonal'"),
        ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "'sometimes'"),
        ("SOLVER.LR_SCHEDULER_NAME", "'WarmupCosineLR'"),  # with BASE_LR_END > BASE_LR below
    ],
)
def test_detectron2_values_are_checked_by_detectron2(key, value):
    """The values detectron2 decides are refused by detectron2's own objects, named by key."""
    cfg = tiny_cfg(key, value, "SOLVER.BASE_LR_END", "1.0")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "="):
        validate_config(cfg, training=True)


def test_every_scheduler_the_trainer_builds_is_accepted():
    for name in ("WarmupPolyLR", "WarmupMultiStepLR", "WarmupCosineLR"):
        validate_config(tiny_cfg("SOLVER.LR_SCHEDULER_NAME", name), training=True)
