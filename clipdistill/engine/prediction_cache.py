"""Resumable evaluation: per-image predictions kept on disk (``TEST.PREDICTION_CACHE``).

A slow segmenter (CaR: minutes per image on a CPU) evaluated on thousands of images must survive
an interruption. ``PredictionCache`` wraps any segmenter for detectron2's
``inference_on_dataset``: for every input with a ``dataset_name`` and a ``file_name`` it writes
the arg-max label map (PNG, 8 or 16 bit) under
``<directory>/<fingerprint>/<dataset>-<vocabulary hash>/<image stem>-<image content hash>.png``
and, on a re-run, reads it back instead of running the model. The fingerprint covers the model
and input configuration and the model's current weights (not only the checkpoint file it was
loaded from: an evaluation during training sees the weights training changed), and the file name
the image's content, so a changed config, weights or image never reads stale predictions (the
rule of ``clipdistill.utils.fingerprint``). A cached label map that cannot be read (truncated,
damaged) is recomputed and rewritten.

A cached prediction is returned as a one-hot ``[K, H, W]`` float32 map: the evaluator (which
only takes the arg-max) scores it exactly like the original prediction.
"""

import logging
import os
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.data import MetadataCatalog

from ..utils.fingerprint import digest, file_sha256, state_dict_sha256
from ..utils.io import atomic_save_image

__all__ = ["PredictionCache", "config_fingerprint", "maybe_wrap_prediction_cache"]

logger = logging.getLogger(__name__)


def config_fingerprint(cfg, model: Optional[nn.Module] = None) -> str:
    """A short hash of what decides a prediction: ``MODEL``, ``INPUT`` and the weights: those
    of ``model`` as they are now when given, else the checkpoint file's content."""
    parts = [cfg.MODEL.dump(), cfg.INPUT.dump()]
    weights = cfg.MODEL.WEIGHTS
    if model is not None:
        parts.append(state_dict_sha256(model))
    elif weights and os.path.isfile(weights):
        parts.append(file_sha256(weights))
    return digest(parts, 16)


class PredictionCache(nn.Module):
    """Wrap ``model``: inputs whose label map is on disk are not recomputed.

    Args:
        model: a segmenter (detectron2 inputs -> ``[{"sem_seg": [K, H, W]}]``).
        directory: root of the cache, e.g. ``OUTPUT_DIR/inference/prediction_cache``.
        fingerprint: ``config_fingerprint(cfg, model)``.
    """

    def __init__(self, model: nn.Module, directory: str, fingerprint: str):
        super().__init__()
        self.model = model
        self.root = os.path.join(directory, fingerprint)
        self.hits = 0
        self.misses = 0

    def _path(self, x: dict) -> Optional[str]:
        dataset, file_name = x.get("dataset_name"), x.get("file_name")
        if dataset is None or file_name is None or not os.path.isfile(file_name):
            return None
        classes = list(MetadataCatalog.get(dataset).stuff_classes)
        folder = f"{dataset}-{digest(classes, 8)}"
        stem = os.path.splitext(os.path.basename(file_name))[0]
        return os.path.join(self.root, folder, f"{stem}-{file_sha256(file_name)[:16]}.png")

    @staticmethod
    def _one_hot(label: np.ndarray, num_classes: int) -> torch.Tensor:
        lab = torch.from_numpy(label.astype(np.int64))
        out = torch.zeros((num_classes,) + tuple(lab.shape), dtype=torch.float32)
        out.scatter_(0, lab[None], 1.0)
        return out

    @staticmethod
    def _read(path: str) -> Optional[np.ndarray]:
        """The cached label map at ``path``, or None (logged) when it cannot be read."""
        try:
            with Image.open(path) as im:
                return np.array(im)
        except (OSError, SyntaxError, ValueError) as e:  # truncated, damaged, not an image
            logger.warning(f"Cached prediction {path} is unreadable ({e}): recomputing it")
            return None

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        results: List[Optional[dict]] = [None] * len(batched_inputs)
        todo = []
        for i, x in enumerate(batched_inputs):
            path = self._path(x)
            label = self._read(path) if path is not None and os.path.isfile(path) else None
            k = (
                len(MetadataCatalog.get(x["dataset_name"]).stuff_classes)
                if label is not None
                else 0
            )
            if label is not None and label.ndim == 2 and label.size and int(label.max()) < k:
                results[i] = {"sem_seg": self._one_hot(label, k)}
                self.hits += 1
            else:
                if label is not None:
                    logger.warning(f"Cached prediction {path} is not a label map: recomputing it")
                todo.append(i)
        if todo:
            outputs = self.model([batched_inputs[i] for i in todo])
            for i, out in zip(todo, outputs):
                results[i] = out
                self.misses += 1
                path = self._path(batched_inputs[i])
                if path is None:
                    continue
                sem_seg = out["sem_seg"]
                label = sem_seg.argmax(dim=0).cpu().numpy()
                dtype = np.uint8 if sem_seg.shape[0] <= 256 else np.uint16
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic_save_image(path, label.astype(dtype))
        return results


def maybe_wrap_prediction_cache(cfg, model: nn.Module) -> nn.Module:
    """``PredictionCache`` around ``model`` when ``TEST.PREDICTION_CACHE.ENABLED``."""
    if not cfg.TEST.PREDICTION_CACHE.ENABLED:
        return model
    directory = os.path.join(cfg.OUTPUT_DIR, "inference", "prediction_cache")
    wrapped = PredictionCache(model, directory, config_fingerprint(cfg, model))
    logger.info(f"Per-image predictions are cached in {wrapped.root} (TEST.PREDICTION_CACHE)")
    return wrapped
