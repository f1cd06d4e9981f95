"""The inference speed-ups keep the results: channels-last + BatchNorm folding (where deployment
asks for it) vs the plain model, one head call per vocabulary vs one per image, one text cache,
inference_mode only where valid."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from clipdistill.modeling import batch_norm
from clipdistill.modeling.batch_norm import fold_for_inference
from common import random_inputs, tiny_cfg

PLAIN = ("MODEL.CLIPDISTILL.CHANNELS_LAST", "False")


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
    fast.eval()
    assert fold_for_inference(fast) > 0
    return plain, fast


def test_fast_inference_matches_plain(models):
    plain, fast = models
    assert fast.channels_last and not plain.channels_last
    student = list(fast.backbone.modules()) + list(fast.proj.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in student)  # all folded
    inputs = random_inputs([(96, 128), (96, 127)], seed=3)
    inputs[1]["height"], inputs[1]["width"] = 150, 200
    with torch.no_grad():
        a, b = plain(inputs), fast(inputs)
    for x, y in zip(a, b):
        assert x["sem_seg"].shape == y["sem_seg"].shape
        torch.testing.assert_close(y["sem_seg"], x["sem_seg"], atol=1e-4, rtol=1e-4)
    # deterministic: the same inputs give bit-identical outputs
    with torch.no_grad():
        c = fast(inputs)
    assert all(torch.equal(x["sem_seg"], y["sem_seg"]) for x, y in zip(b, c))


def test_a_fold_that_changes_the_output_is_undone(monkeypatch):
    """The folded segmenter is checked against the original: a wrong fold (here: a bias off by
    one) is undone, the original modules are kept and a warning is logged."""
    model = build_model(tiny_cfg()).eval()
    backbone, proj = model.backbone, model.proj
    fold_into = batch_norm._fold_into

    def wrong(conv, bn):
        fold_into(conv, bn)
        conv.bias.data += 1.0

    monkeypatch.setattr(batch_norm, "_fold_into", wrong)
    assert fold_for_inference(model) == 0
    assert model.backbone is backbone and model.proj is proj
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())


def test_one_head_call_per_vocabulary_and_cached_text(models, monkeypatch):
    _, fast = models
    inputs = random_inputs([(64, 64)] * 3, seed=7)  # same size: batching adds no padding
    inputs[1]["dataset_name"] = "voc20_sem_seg_val"  # same names as the training vocabulary
    fast.set_vocabulary(None)
    with torch.no_grad():
        per_image = [fast([x])[0]["sem_seg"] for x in inputs]
    calls = {"head": 0, "text": 0}
    head_forward = fast.seg_head.forward
    compute_text = fast.teacher.text_encoder.compute

    def counting_head(*a, **k):
        calls["head"] += 1
        return head_forward(*a, **k)

    def counting_text(*a, **k):
        calls["text"] += 1
        return compute_text(*a, **k)

    monkeypatch.setattr(fast.seg_head, "forward", counting_head)
    monkeypatch.setattr(fast.teacher.text_encoder, "compute", counting_text)
    with torch.no_grad():
        batched = fast(inputs)
    # one vocabulary, its embeddings already in the (one) text cache: the text tower never runs
    assert calls == {"head": 1, "text": 0}
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
