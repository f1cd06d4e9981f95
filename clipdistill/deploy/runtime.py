"""The torch-free runtime of an open-vocabulary export (``export_open_vocab``): numpy,
onnxruntime, ``regex`` and ``ftfy`` only.

    seg = Segmenter("out/deploy")
    labels = seg.segment(image_rgb_uint8_hwc, ["cat", "potted plant"])   # int64 [H, W]

The text embeddings of a vocabulary are computed once (tokenizer -> ``text.onnx`` for every
name x template, normalised, averaged over the templates, re-normalised: ``TextEncoder``'s
ensembling) and cached per vocabulary (LRU).
"""

import json
import os
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple
import numpy as np

from .tokenizer import BPETokenizer

__all__ = [
    "Segmenter",
    "bilinear_resize",
    "format_template",
    "load_deploy_json",
    "onnx_session",
    "resize_shortest_edge",
]


def load_deploy_json(folder: str) -> dict:
    path = os.path.join(folder, "deploy.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no deploy.json (export the folder with export_open_vocab)"
        )
    with open(path) as f:
        meta = json.load(f)
    for key in ("student", "text", "bpe", "context_length", "templates", "input_format"):
        if key not in meta:
            raise ValueError(f"{path}: key {key!r} missing")
    return meta


def onnx_session(path: str, threads: int = 0):
    """An onnxruntime CPU session (``threads`` intra-op threads; 0: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def resize_shortest_edge(
    h: int, w: int, short: Optional[int], max_size: Optional[int]
) -> Tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` output size (the test-time mapper's)."""
    if not short:
        return h, w
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max_size and max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


def format_template(template: str, name: str) -> str:
    """A stored prompt template with ``name`` in its ``{}`` and the name's indefinite article
    (the testbed's ``noun_phrase`` rule) in ``{article}``
    (``clipdistill.deploy.open_vocab.portable_templates``)."""
    art = "an" if name.strip()[:1].lower() in "aeiou" else "a"
    return template.replace("{article}", art).format(name)


class Segmenter:
    """Open-vocabulary segmentation with an exported folder.

    Args:
        folder: written by ``clipdistill.deploy.open_vocab.export_open_vocab``.
        student: the student graph file in ``folder`` (default ``deploy.json``'s; e.g. an int8
            ``student.int8.onnx``).
        threads: onnxruntime intra-op threads (0: its default).
        resize: resize to the test-time size (``min_size_test``/``max_size_test``) and back.
        cache_size: vocabularies whose embeddings are kept.
    """

    def __init__(
        self,
        folder: str,
        student: Optional[str] = None,
        threads: int = 0,
        resize: bool = True,
        cache_size: int = 16,
    ):
        self.folder = folder
        self.meta = load_deploy_json(folder)
        self.student = onnx_session(os.path.join(folder, student or self.meta["student"]), threads)
        outputs = [o.name for o in self.student.get_outputs()]
        #: the student graph returns logits (else labels: ``export_open_vocab(output="labels")``)
        self.has_logits = "logits" in outputs
        if not self.has_logits and "labels" not in outputs:
            raise ValueError(
                f"{folder}: the student graph outputs {outputs}, neither 'logits' nor 'labels'"
            )
        self.text = onnx_session(os.path.join(folder, self.meta["text"]), threads)
        self.tokenizer = BPETokenizer(
            os.path.join(folder, self.meta["bpe"]), self.meta["context_length"]
        )
        self.templates: List[str] = list(self.meta["templates"])
        self.resize = resize
        self.cache_size = int(cache_size)
        self._cache: "OrderedDict[Tuple[str, ...], np.ndarray]" = OrderedDict()

    @staticmethod
    def _check_names(names: Sequence[str]) -> List[str]:
        if isinstance(names, str):
            raise ValueError(f"class names must be a list of names, not the string {names!r}")
        out = [str(n).strip() for n in names]
        if not out or any(not n for n in out) or len(set(out)) != len(out):
            raise ValueError(f"class names must be non-empty and unique: {list(names)!r}")
        return out

    def text_embeddings(self, names: Sequence[str]) -> np.ndarray:
        """``[K, D]`` float32 prompt-ensembled, normalised embeddings (cached per vocabulary)."""
        names = self._check_names(names)
        key = tuple(names)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        prompts = [format_template(t, n) for n in names for t in self.templates]
        tokens = self.tokenizer(prompts)
        emb = self.text.run(None, {"tokens": tokens})[0].astype(np.float32)
        emb = emb.reshape(len(names), len(self.templates), -1)
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        emb = emb.mean(axis=1)
        emb = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float32)
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    def logits(self, image_chw: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Logits ``[K, H, W]`` of a float32 ``[3, H, W]`` image (0..255, ``input_format``
        order) at the size given."""
        if not self.has_logits:
            raise ValueError(
                f"{self.folder}: this student graph outputs labels only (exported with "
                "output='labels'): use labels() or segment(), or export with logits"
            )
        return self._run(image_chw, names)

    def labels(self, image_chw: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Label map int64 ``[H, W]`` of a float32 ``[3, H, W]`` image at the size given: the
        graph's ``labels`` output when it has one (computed without upsampling every class),
        else the argmax of its logits."""
        out = self._run(image_chw, names)
        return out.argmax(axis=0) if self.has_logits else out

    def _run(self, image_chw: np.ndarray, names: Sequence[str]) -> np.ndarray:
        text = self.text_embeddings(names)
        x = np.ascontiguousarray(image_chw[None], dtype=np.float32)
        return self.student.run(None, {"image": x, "text": text})[0][0]

    def segment(self, image: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Label map int64 ``[H, W]`` (indices into ``names``) of an RGB uint8 ``[H, W, 3]``
        image (greyscale ``[H, W]`` accepted)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
        image = image[:, :, :3]
        if self.meta["input_format"] == "BGR":
            image = image[:, :, ::-1]
        h, w = image.shape[:2]
        nh, nw = (h, w)
        if self.resize:
            nh, nw = resize_shortest_edge(
                h, w, self.meta.get("min_size_test"), self.meta.get("max_size_test")
            )
        if (nh, nw) != (h, w):
            from PIL import Image

            image = np.asarray(
                Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR)
            )
        x = image.transpose(2, 0, 1)
        if (nh, nw) == (h, w):
            return self.labels(x, names).astype(np.int64)
        if self.has_logits:
            # as detectron2's sem_seg_postprocess: the logits, bilinearly, back to the image size
            return bilinear_resize(self.logits(x, names), h, w).argmax(axis=0).astype(np.int64)
        labels = self.labels(x, names)  # a labels-only graph: nearest
        rows = (np.arange(h) * nh // h).clip(0, nh - 1)
        cols = (np.arange(w) * nw // w).clip(0, nw - 1)
        return labels[rows][:, cols].astype(np.int64)


def _bilinear_axis(n_in: int, n_out: int):
    """Source indices and weights of ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` along one axis (no antialiasing)."""
    scale = np.float32(n_in / n_out)  # float32 throughout, as PyTorch's CPU kernel
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def bilinear_resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """``[K, H, W]`` float -> ``[K, h, w]``, as ``F.interpolate(x[None], (h, w), mode="bilinear",
    align_corners=False)`` (detectron2's ``sem_seg_postprocess``), in numpy."""
    r0, r1, rw = _bilinear_axis(x.shape[1], h)
    c0, c1, cw = _bilinear_axis(x.shape[2], w)
    rows = x[:, r0, :] * (1 - rw)[None, :, None] + x[:, r1, :] * rw[None, :, None]
    return rows[:, :, c0] * (1 - cw) + rows[:, :, c1] * cw


def colorize(labels: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image of ``labels`` with one fixed random colour per class."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (max(1, num_classes), 3), dtype=np.uint8)
    return palette[labels]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m clipdistill.deploy.runtime FOLDER IMAGE OUT.png --class-names cat dog``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m clipdistill.deploy.runtime",
        description="Segment an image with an exported open-vocabulary folder (no torch).",
    )
    parser.add_argument("folder")
    parser.add_argument("image")
    parser.add_argument("output", help="coloured label map (PNG)")
    parser.add_argument("--class-names", nargs="+", default=None, help="default: training ones")
    parser.add_argument("--student", default=None, help="student graph in FOLDER")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    from PIL import Image

    try:
        seg = Segmenter(args.folder, student=args.student, threads=args.threads)
        names = args.class_names or seg.meta.get("train_vocabulary")
        image = np.asarray(Image.open(args.image).convert("RGB"))
        labels = seg.segment(image, names)
    except (OSError, ValueError) as e:
        print(f"clipdistill.deploy.runtime: error: {e}", file=sys.stderr)
        return 2
    tmp = args.output + ".tmp.png"
    Image.fromarray(colorize(labels, len(names))).save(tmp)
    os.replace(tmp, args.output)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    for n, c in zip(names, counts):
        if c:
            print(f"{n}: {100.0 * c / labels.size:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
