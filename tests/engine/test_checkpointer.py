"""SegmenterCheckpointer: strict loading of any segmenter through its convert_checkpoint hook."""

import pytest
import torch
from torch import nn

from clipdistill.engine import CheckpointMismatchError, SegmenterCheckpointer
from clipdistill.modeling.segmenter import OpenVocabSegmenter


class _Toy(OpenVocabSegmenter):
    """A segmenter whose official release called ``decoder`` "head" and stored an extra buffer."""

    def __init__(self):
        super().__init__(train_vocabulary=["a", "b"])
        self.decoder = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)

    @classmethod
    def convert_checkpoint(cls, state_dict):
        out = {}
        for k, v in state_dict.items():
            if k == "unused_official_buffer":
                continue  # official-only bookkeeping, nothing to load
            out[k.replace("head.", "decoder.", 1) if k.startswith("head.") else k] = v
        return out


def _official_state(model):
    state = {
        k.replace("decoder.", "head.", 1): v.clone() + 1 for k, v in model.state_dict().items()
    }
    state["unused_official_buffer"] = torch.zeros(3)
    return state


def test_official_names_load_through_the_hook(tmp_path):
    model = _Toy()
    official = _official_state(model)
    torch.save({"model": official}, tmp_path / "official.pth")
    SegmenterCheckpointer(model).load(str(tmp_path / "official.pth"))
    torch.testing.assert_close(model.decoder.weight, official["head.weight"])
    torch.testing.assert_close(model.norm.bias, official["norm.bias"])
    # a checkpoint saved by clipdistill passes the hook unchanged and loads back
    SegmenterCheckpointer(model, str(tmp_path)).save("ours")
    fresh = _Toy()
    SegmenterCheckpointer(fresh).load(str(tmp_path / "ours.pth"))
    torch.testing.assert_close(fresh.decoder.weight, official["head.weight"])


def test_wrong_checkpoint_names_the_keys(tmp_path):
    model = _Toy()
    bad = _official_state(model)
    bad["head.extra"] = torch.zeros(1)
    del bad["norm.weight"]
    bad["head.weight"] = torch.zeros(5, 3)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        SegmenterCheckpointer(model).load(str(tmp_path / "bad.pth"))
    msg = str(info.value)
    assert "bad.pth" in msg
    assert "missing keys [norm.weight]" in msg
    assert "unexpected keys [decoder.extra]" in msg
    assert "decoder.weight: checkpoint (5, 3) vs model (2, 3)" in msg


def test_pkl_weights_load_arrays_only_and_never_run_code(tmp_path):
    """A detectron2 model-zoo .pkl (numpy arrays in plain dicts) loads; a crafted .pkl that asks
    pickle to call something is refused, naming the file and the global, without running it."""
    import pickle

    import numpy as np

    from clipdistill.engine.checkpoint import UnreadableCheckpointError

    model = _Toy()
    zoo = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": zoo, "__author__": "zoo", "matching_heuristics": False}, f)
    SegmenterCheckpointer(model).load(str(tmp_path / "zoo.pkl"))
    np.testing.assert_allclose(model.decoder.weight.detach().numpy(), zoo["decoder.weight"])

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"decoder.weight": Evil()}, "__author__": "x"}, f)
    with pytest.raises(UnreadableCheckpointError, match=r"evil\.pkl.*io\.open"):
        SegmenterCheckpointer(_Toy()).load(str(tmp_path / "evil.pkl"))
    assert not marker.exists()
