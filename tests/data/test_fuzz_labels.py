"""Property-based fuzzing (hypothesis) of label files against ``SemSegDatasetMapper``: whatever a
label file holds (garbage bytes, truncated PNGs, any PIL mode, any size, any values), the mapper
returns a result or raises a ``UserError`` naming the label file; it never crashes otherwise."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipdistill.data import SemSegDatasetMapper
from clipdistill.utils.errors import UserError
from common import tiny_cfg, write_image

H, W = 12, 16

_MODES = {
    "L": np.uint8,
    "P": np.uint8,
    "I;16": np.uint16,
    "I": np.int32,
    "F": np.float32,
    "1": np.bool_,
    "RGB": np.uint8,
    "LA": np.uint8,
}


@st.composite
def label_files(draw):
    """Bytes of a label file: an image of any mode, size and values, maybe cut short, or junk."""
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "junk", "empty"]))
    if kind == "junk":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "empty":
        return b""
    mode = draw(st.sampled_from(sorted(_MODES)))
    h = draw(st.sampled_from([H, H, H, 1, H + 3]))
    w = draw(st.sampled_from([W, W, W, 2, W - 5]))
    dtype = _MODES[mode]
    channels = {"RGB": 3, "LA": 2}.get(mode)
    if dtype is np.float32:
        values = st.one_of(
            st.floats(-300, 70000, width=32), st.sampled_from([float("nan"), float("inf")])
        )
    elif dtype is np.bool_:
        values = st.booleans()
    else:
        info = np.iinfo(dtype)
        values = st.one_of(
            st.integers(0, 25), st.just(255), st.integers(int(info.min), int(info.max))
        )
    flat = draw(st.lists(values, min_size=1, max_size=8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = np.asarray(flat, dtype=dtype)[rng.integers(0, len(flat), (h, w))]
    if channels:
        arr = np.repeat(arr[..., None], channels, axis=2)
    image = Image.fromarray(arr)
    if mode == "P":
        image = Image.fromarray(arr.astype(np.uint8)).convert("P")
        image.putpalette(list(range(256)) * 3)
    elif mode == "I;16":
        image = Image.fromarray(arr.astype(np.uint16))
    fmt = "TIFF" if mode in ("F", "I") else "PNG"  # Pillow writes these as TIFF
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(1, max(1, len(data) - 1)))]
    return data


@pytest.fixture(scope="module")
def mappers(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_labels")
    image = str(root / "image.png")
    write_image(image, np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    cfg = tiny_cfg(
        "INPUT.MIN_SIZE_TRAIN", "(16,)", "INPUT.CROP.SIZE", "[8, 8]", "INPUT.MIN_SIZE_TEST", "16"
    )
    return image, str(root), {t: SemSegDatasetMapper(cfg, t) for t in (True, False)}


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=label_files(), is_train=st.booleans())
def test_any_label_file_gives_a_result_or_a_named_error(mappers, data, is_train):
    image, root, mapper = mappers
    label = os.path.join(root, "label.png")
    with open(label, "wb") as f:
        f.write(data)
    try:
        out = mapper[is_train]({"file_name": image, "sem_seg_file_name": label})
    except UserError as e:
        assert label in str(e), str(e)
        return
    # a result: labels are class indices or the model's ignore value
    assert out["image"].shape[0] == 3
    if is_train:
        sem = out["sem_seg"].numpy()
        assert sem.dtype == np.int64
        assert (((sem >= 0) & (sem < 20)) | (sem == 255)).all()
