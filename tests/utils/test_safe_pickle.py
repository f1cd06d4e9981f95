"""The restricted unpickler (ADE20K's index, .pkl weights): containers and numpy arrays load, a
pickle that asks for any other callable is refused without running it."""

import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from clipdistill.utils.safe_pickle import restricted_load


def test_containers_and_arrays_load():
    index = {
        "folder": ["ADE/training/a", "ADE/validation/b"],
        "filename": ["ADE_train_1.jpg", "ADE_val_2.jpg"],
        "objectPresence": np.arange(6, dtype=np.int16).reshape(2, 3),
        "scalar": np.float64(2.5),
        "od": OrderedDict(a=(1, 2.0, None, b"x"), b={1, 2}),
    }
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        out = restricted_load(io.BytesIO(pickle.dumps(index, protocol=protocol)))
        assert out["folder"] == index["folder"] and out["od"] == index["od"]
        np.testing.assert_array_equal(out["objectPresence"], index["objectPresence"])
        assert out["scalar"] == 2.5


def test_a_pickle_that_calls_something_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    data = pickle.dumps({"folder": [Evil()]})
    with pytest.raises(pickle.UnpicklingError, match="mkdir"):
        restricted_load(io.BytesIO(data))
    assert not marker.exists()
