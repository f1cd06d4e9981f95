"""CaR's recurrence (stop rule, pruning, fall-backs) and the META_ARCH's contract and bad-input
handling, on the tiny random CLIP."""

import logging
import os

import numpy as np
import pytest
import torch

from common import CONFIGS
from clipdistill.config import get_clipdistill_cfg
from detectron2.modeling import build_model

CAR_TOY = os.path.join(CONFIGS, "car", "car_toyclip_voc20toy.yaml")


@pytest.fixture(scope="module")
def car():
    cfg = get_clipdistill_cfg(CAR_TOY, ["MODEL.CAR.CRF.ENABLED", "False"])
    return build_model(cfg).eval()


class _Plan:
    """Stands in for the proposal and classifier CLIPs: step ``t`` returns ``props[t]`` and a
    score matrix whose diagonal is ``scores[t]``; records the CAM texts it was given."""

    def __init__(self, seg, props, scores):
        self.props, self.scores, self.step, self.fg = props, scores, 0, []
        seg.proposals = self.proposals
        seg.classify = self.classify
        seg.encode_image = lambda image: None

    def proposals(self, encoded, fg, bg, hw):
        self.fg.append(fg.clone())
        return self.props[self.step]

    def classify(self, images, text):
        s = torch.as_tensor(self.scores[self.step], dtype=torch.float32)
        self.step += 1
        return torch.diag(s)


@pytest.fixture
def seg(car):
    from clipdistill.modeling.car.recurrence import CaRSegmenter

    s = car.segmenter
    threshold = s.confidence_threshold
    yield s
    for k in ("proposals", "classify", "encode_image"):
        s.__dict__.pop(k, None)  # back to the class's methods
    s.confidence_threshold = threshold
    assert isinstance(s, CaRSegmenter)


def _props(n, value, hw=(8, 8)):
    return np.stack([np.full(hw, value + 0.01 * i, np.float32) for i in range(n)])


def test_recurrence_prunes_until_the_count_is_stable(seg):
    seg.confidence_threshold = 0.3
    props = [_props(5, 0.1), _props(3, 0.2), _props(2, 0.3)]
    scores = [[0.5, 0.1, 0.6, 0.05, 0.7], [0.4, 0.2, 0.5], [0.45, 0.5]]
    plan = _Plan(seg, props, scores)
    image = np.zeros((8, 8, 3), np.uint8)
    res = seg.segment(image, ["a", "b", "c", "d", "e"])
    assert [s["texts"] for s in res.steps] == [[0, 1, 2, 3, 4], [0, 2, 4], [0, 4]]
    assert res.survivors == [0, 4]
    np.testing.assert_allclose(res.scores, [0.45, 0, 0, 0, 0.5])
    # masks (CRF off: the last step's proposals) go to the survivors by position
    np.testing.assert_allclose(res.masks[0], props[2][0])
    np.testing.assert_allclose(res.masks[4], props[2][1])
    assert not res.masks[[1, 2, 3]].any()
    # step 1 uses the bare names' embeddings, later steps the CAM_TEMPLATE ones
    bare, templated = seg._name_text(list("abcde")), seg._cam_text(list("abcde"))
    torch.testing.assert_close(plan.fg[0], bare)
    torch.testing.assert_close(plan.fg[1], templated[[0, 2, 4]])


def test_nothing_survives_keeps_the_best_then_stops(seg):
    seg.confidence_threshold = 0.6
    props = [_props(3, 0.1), _props(1, 0.2)]
    plan = _Plan(seg, props, [[0.1, 0.3, 0.2], [1.0]])
    res = seg.segment(np.zeros((8, 8, 3), np.uint8), ["a", "b", "c"])
    assert [s["kept"] for s in res.steps] == [[1], [0]]
    assert res.survivors == [1] and plan.step == 2
    np.testing.assert_allclose(res.scores, [0, 1.0, 0])


def test_all_zero_proposals_fall_back_to_the_previous_step(seg):
    seg.confidence_threshold = 0.3
    props = [_props(3, 0.1), np.zeros((2, 8, 8), np.float32)]
    _Plan(seg, props, [[0.5, 0.1, 0.6], [0.5, 0.5]])
    res = seg.segment(np.zeros((8, 8, 3), np.uint8), ["a", "b", "c"])
    assert res.survivors == [0, 2]
    np.testing.assert_allclose(res.proposals, props[0])  # step 1's three maps
    # official pairing by position: survivors 0 and 2 get step-1 maps 0 and 1
    np.testing.assert_allclose(res.masks[2], props[0][1])


def test_a_single_text_scores_one(car):
    seg = car.segmenter
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    text = torch.stack([enc(["cat"]) for enc in seg._classifier_text])
    assert float(seg.classify([image], text)[0, 0]) == 1.0
    scores = seg.classify([image, image], torch.stack([enc(["cat", "dog"])
                                                       for enc in seg._classifier_text]))
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))


def test_contract_background_and_fill(car):
    image = torch.from_numpy(
        np.random.default_rng(1).integers(0, 256, (3, 48, 40), dtype=np.uint8)
    )
    car.set_vocabulary(["background", "cat", "dog"])
    try:
        out = car([{"image": image, "height": 96, "width": 80}])[0]["sem_seg"]
        assert out.shape == (3, 96, 80)
        label, _ = car.label_map(image.permute(1, 2, 0).numpy(), ["background", "cat", "dog"])
        same = car([{"image": image}])[0]["sem_seg"].argmax(0).numpy()
        # painted pixels take their class; the rest goes to "background" (index 0)
        np.testing.assert_array_equal(same, np.maximum(label - 1, 0))
        car.set_vocabulary(["cat", "dog"])
        out = car([{"image": image}])[0]["sem_seg"]
        assert out.shape == (2, 48, 40) and (out >= 0).all() and (out <= 1).all()
        probs = car.scores_to_probs(out[None])
        torch.testing.assert_close(probs.sum(1), torch.ones(1, 48, 40))
    finally:
        car.set_vocabulary(None)


def test_tiny_image_warns_and_segments_nothing(car, caplog):
    car.set_vocabulary(["background", "cat"])
    try:
        image = torch.full((3, 10, 12), 100, dtype=torch.uint8)
        with caplog.at_level(logging.WARNING):
            out = car([{"image": image}])[0]["sem_seg"]
        assert "10x12 image is at most one 16-pixel patch" in caplog.text
        assert out.shape == (2, 10, 12) and (out.argmax(0) == 0).all()
    finally:
        car.set_vocabulary(None)


def test_truncated_name_warns_naming_it(car, caplog):
    long_name = " ".join(["very"] * 80) + " long cat"
    car.set_vocabulary(["cat", long_name])
    try:
        image = torch.full((3, 32, 32), 100, dtype=torch.uint8)
        with caplog.at_level(logging.WARNING):
            car([{"image": image}])
        assert "truncated by the CLIP tokenizer" in caplog.text and long_name in caplog.text
    finally:
        car.set_vocabulary(None)


def test_training_is_refused(car):
    car.train()
    try:
        with pytest.raises(RuntimeError, match="training-free"):
            car([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])
    finally:
        car.eval()


def test_config_errors_name_the_key():
    for opts, key in (
        (["MODEL.CAR.VISUAL_PROMPTS", "['glow']"], "MODEL.CAR.VISUAL_PROMPTS"),
        (["MODEL.CAR.GRAY_CONVERSION", "'hsv'"], "MODEL.CAR.GRAY_CONVERSION"),
        (["MODEL.CAR.CLASS_NAME_MAP", "['bird']"], "MODEL.CAR.CLASS_NAME_MAP"),
        (["MODEL.CAR.CLASSIFIER_TEMPLATES", "'nope'"], "MODEL.CAR.CLASSIFIER_TEMPLATES"),
    ):
        with pytest.raises(ValueError, match=key):
            build_model(get_clipdistill_cfg(CAR_TOY, opts))


def test_runs_under_inference_mode(car):
    # the benchmark and predictors call segmenters under torch.inference_mode; Grad-CAM needs
    # autograd inside, on normal tensors
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 40, 48), dtype=np.uint8))
    car.set_vocabulary(["cat", "dog"])
    try:
        with torch.inference_mode():
            out = car([{"image": image}])[0]["sem_seg"]
        expected = car([{"image": image}])[0]["sem_seg"]
        torch.testing.assert_close(out, expected)
    finally:
        car.set_vocabulary(None)
