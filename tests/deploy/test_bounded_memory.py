"""Bounded memory: the predictor's label map (class chunks) and streamed score maps of a
1,000-name vocabulary need a fraction of the ``K x H x W`` float32 logits that the full-size
path holds (peak RSS measured relative, in a fresh process); they equal the full-size path's;
the in-memory text-embedding caches stay bounded over 100 vocabularies."""

import json
import os
import subprocess
import sys

import numpy as np
import torch

from clipdistill.deploy import SegPredictor
from clipdistill.modeling.postprocess import CoarseSemSeg, iter_probs, label_map
from common import REPO, tiny_cfg

K, H, W = 1000, 160, 192

SCRIPT = r"""
import json, os, sys, tempfile
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from common import tiny_cfg
from clipdistill.deploy import SegPredictor
from clipdistill.deploy.demo import write_scores_npz

K, H, W = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
names = [f"class {i}" for i in range(K)]
predictor = SegPredictor(tiny_cfg(), class_names=names)
predictor.chunk_elements = 1 << 20
rng = np.random.default_rng(0)
small = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
out = os.path.join(tempfile.mkdtemp(), "scores.npz")


def run(im):
    res = predictor(im, scores=True)
    with open(out, "wb") as f:
        write_scores_npz(f, res.scores, res.class_names)
    return res


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def reset_peak_rss():  # Linux >= 4.0: the peak (VmHWM, ru_maxrss) restarts from the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


run(small)  # warm-up: everything but the image-size work
reset_peak_rss()
before = peak_rss_bytes()
res = run(image)
after = peak_rss_bytes()
scores = np.load(out)["scores"]
print(json.dumps({
    "peak_increase_bytes": after - before,
    "label_shape": list(res.label.shape),
    "scores_shape": list(scores.shape),
    "scores_sum_err": float(np.abs(scores[:, ::16, ::16].astype(np.float32).sum(0) - 1).max()),
    "argmax_agrees": float((scores[:, ::8, ::8].argmax(0) == res.label[::8, ::8]).mean()),
}))
"""


def test_1000_name_vocabulary_needs_a_fraction_of_the_full_size_logits():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, REPO, str(K), str(H), str(W)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["label_shape"] == [H, W] and r["scores_shape"] == [K, H, W]
    # float16 storage of ~1/1000 probabilities: a few ties flip the argmax
    assert r["scores_sum_err"] < 2e-2 and r["argmax_agrees"] > 0.95
    full_logits = K * H * W * 4  # what the full-size path holds once (328 MB), before softmax
    print(
        f"peak RSS increase {r['peak_increase_bytes'] / 2**20:.0f} MiB (full logits "
        f"{full_logits / 2**20:.0f} MiB)"
    )
    assert r["peak_increase_bytes"] < 0.25 * full_logits


def test_chunked_label_and_probs_equal_the_full_size_path(tiny_checkpoint):
    predictor = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint), class_names=["a", "b"])
    names = [f"name {i}" for i in range(37)]
    predictor.set_class_names(names)
    image = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    with torch.no_grad():
        full = predictor.model([predictor._to_input(image)])[0]["sem_seg"]
    predictor.chunk_elements = 5 * 70 * 90  # 5 classes a chunk
    res = predictor(image, scores=True)
    assert np.array_equal(res.label, full.argmax(0).numpy())
    probs = res.scores.numpy()
    torch.testing.assert_close(torch.from_numpy(probs), full.softmax(0), atol=1e-6, rtol=1e-5)
    # ties go to the first class, like argmax
    tie = CoarseSemSeg(torch.zeros(7, 4, 5), (4, 5))
    assert (label_map(tie, budget=20) == 0).all()
    assert sum(p.shape[0] for _, p in iter_probs(tie, budget=40)) == 7


def test_the_text_embedding_cache_stays_bounded_over_100_vocabularies(tiny_checkpoint):
    predictor = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint), class_names=["x"])
    image = np.zeros((24, 24, 3), np.uint8)
    for i in range(100):
        predictor.set_class_names([f"thing {i}", f"other {i}"])
        predictor(image)
    model = predictor.model
    encoder = model.teacher.text_encoder
    assert 0 < len(encoder._memory) <= encoder.memory_size < 100
    # the one text cache: the student keeps no vocabulary of its own
    assert not [k for k, v in vars(model).items() if isinstance(v, dict) and len(v) >= 100]


def test_predictor_labels_from_candidate_classes(tiny_checkpoint):
    """The predictor's label map (each pixel's candidate classes, through the chained resizes of
    the test-time mapper and back) against the full computation's argmax; exact_labels and
    label_candidates = 0 (every class, in chunks) reproduce it."""
    predictor = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint), class_names=["a", "b"])
    predictor.set_class_names([f"name {i}" for i in range(200)])
    image = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    with torch.no_grad():
        full = predictor.model([predictor._to_input(image)])[0]["sem_seg"].argmax(0).numpy()
    coarse = predictor.model.coarse_sem_seg([predictor._to_input(image)])[0]
    assert coarse.axes[0].weights.shape[1] == 3  # resized for the test, then back: 3x3 cells
    assert (predictor(image).label == full).mean() > 0.99
    predictor.exact_labels = True
    # exact against the chained tables; F.interpolate twice rounds differently (near-ties only)
    assert (predictor(image).label == full).mean() > 0.9999
    predictor.exact_labels, predictor.label_candidates = False, 0
    assert np.array_equal(predictor(image).label, full)
