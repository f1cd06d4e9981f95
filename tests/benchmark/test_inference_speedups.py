"""The inference speed-ups keep the results: channels-last + folded BatchNorm vs the plain model,
one head call per vocabulary vs one per image, per-vocabulary text cache, inference_mode only
where valid."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from common import random_inputs, tiny_cfg

PLAIN = ("MODEL.CLIPDISTILL.FOLD_BN", "False", "MODEL.CLIPDISTILL.CHANNELS_LAST", "False")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(*PLAIN))
    plain.train()
    with EventStorage():  # non-trivial BatchNorm running statistics
        for _ in range(2):
            plain(random_inputs([(96, 96), (96, 96)]))
    plain.eval()
    fast = build_model(tiny_cfg())
    fast.load_state_dict(plain.state_dict())
    return plain, fast.eval()


def test_fast_inference_matches_plain(models):
    plain, fast = models
    assert fast.channels_last and fast.fold_bn
    inputs = random_inputs([(96, 128), (96, 127)], seed=3)
    inputs[1]["height"], inputs[1]["width"] = 150, 200
    with torch.no_grad():
        a, b = plain(inputs), fast(inputs)
    for x, y in zip(a, b):
        assert x["sem_seg"].shape == y["sem_seg"].shape
        torch.testing.assert_close(y["sem_seg"], x["sem_seg"], atol=1e-4, rtol=1e-4)
    backbone, _ = fast._folded_modules()
    assert backbone is not fast.backbone  # the folded copy is in use
    assert not any("_folded" in k for k in fast.state_dict())
    # deterministic: the same inputs give bit-identical outputs
    with torch.no_grad():
        c = fast(inputs)
    assert all(torch.equal(x["sem_seg"], y["sem_seg"]) for x, y in zip(b, c))


def test_folded_copy_follows_weight_changes(models):
    plain, fast = models
    inputs = random_inputs([(64, 64)], seed=5)
    with torch.no_grad():
        before = fast(inputs)[0]["sem_seg"]
        sd = {k: v.clone() for k, v in fast.state_dict().items()}
        sd["proj.output.weight"] *= 2
        fast.load_state_dict(sd)
        after = fast(inputs)[0]["sem_seg"]
        plain2 = build_model(tiny_cfg(*PLAIN)).eval()
        plain2.load_state_dict(sd)
        ref = plain2(inputs)[0]["sem_seg"]
        fast.load_state_dict(plain.state_dict())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=1e-4, rtol=1e-4)


def test_one_head_call_per_vocabulary_and_cached_text(models, monkeypatch):
    _, fast = models
    inputs = random_inputs([(64, 64)] * 3, seed=7)  # same size: batching adds no padding
    inputs[1]["dataset_name"] = "voc20_sem_seg_val"  # same names as the training vocabulary
    fast.set_vocabulary(None)
    with torch.no_grad():
        per_image = [fast([x])[0]["sem_seg"] for x in inputs]
    calls = {"head": 0, "text": 0}
    head_forward = fast.seg_head.forward
    encode_text = fast.teacher.encode_text

    def counting_head(*a, **k):
        calls["head"] += 1
        return head_forward(*a, **k)

    def counting_text(*a, **k):
        calls["text"] += 1
        return encode_text(*a, **k)

    monkeypatch.setattr(fast.seg_head, "forward", counting_head)
    monkeypatch.setattr(fast.teacher, "encode_text", counting_text)
    with torch.no_grad():
        batched = fast(inputs)
    assert calls == {"head": 1, "text": 0}  # one vocabulary, embeddings already cached
    for x, y in zip(per_image, batched):
        torch.testing.assert_close(y["sem_seg"], x, atol=1e-4, rtol=1e-4)
    # two vocabularies in one batch: two head calls, each image scored against its own
    fast.set_vocabulary(["cat", "sky"])
    calls["head"] = 0
    with torch.no_grad():
        out = fast(inputs)
    fast.set_vocabulary(None)
    assert calls["head"] == 2
    assert [o["sem_seg"].shape[0] for o in out] == [2, 20, 2]


def test_inference_mode_only_where_valid(models):
    _, fast = models
    inputs = random_inputs([(64, 64)], seed=9)
    with torch.no_grad():
        out = fast(inputs)[0]["sem_seg"]
    assert out.is_inference()
    out = fast(inputs)[0]["sem_seg"]  # gradients enabled: a normal tensor with a graph
    assert not out.is_inference() and out.requires_grad
    out.sum().backward()
    fast.zero_grad(set_to_none=True)


def test_inference_dtype_is_validated_and_cpu_stays_float32():
    with pytest.raises(ValueError, match="INFERENCE_DTYPE"):
        build_model(tiny_cfg("MODEL.CLIPDISTILL.INFERENCE_DTYPE", "float8"))
    model = build_model(tiny_cfg("MODEL.CLIPDISTILL.INFERENCE_DTYPE", "float16")).eval()
    with torch.no_grad():
        out = model(random_inputs([(64, 64)]))[0]["sem_seg"]
    assert out.dtype == torch.float32  # autocast applies on CUDA only
