"""Strict checkpointing of any clipdistill segmenter, with per-architecture key conversion."""

import os
from typing import Any, Dict

from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.parallel import DistributedDataParallel

from ..modeling.segmenter import OpenVocabSegmenter

__all__ = ["SegmenterCheckpointer", "CheckpointMismatchError"]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model."""


class SegmenterCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses partial loads, for any segmenter.

    detectron2 loads checkpoints with ``strict=False`` and only logs missing/unexpected keys or
    shape mismatches; evaluating such a half-loaded model gives silently wrong numbers. Here the
    checkpoint's keys first go through the model's ``convert_checkpoint`` hook (which maps an
    official release's names onto clipdistill's, see ``OpenVocabSegmenter``), then any difference
    from ``model.state_dict()`` (which never contains frozen auxiliary modules such as the
    student's teacher) raises :class:`CheckpointMismatchError` naming the keys.
    """

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"Checkpoint {path} does not exist (MODEL.WEIGHTS or the last checkpoint in "
                f"OUTPUT_DIR); pass an existing file, e.g. MODEL.WEIGHTS output/model_final.pth"
            )
        self._loading_path = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, f: str) -> Dict[str, Any]:
        try:
            return super()._load_file(f)
        except Exception as e:  # truncated or corrupt file, wrong format...
            raise RuntimeError(
                f"Cannot read the checkpoint {f} (truncated, corrupt or not a checkpoint?): "
                f"{type(e).__name__}: {e}"
            ) from e

    def _load_model(self, checkpoint: Dict[str, Any]):
        state = checkpoint["model"]
        prefix = "module."
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
        model = self.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if isinstance(model, OpenVocabSegmenter):
            state = model.convert_checkpoint(dict(state))
        checkpoint["model"] = state
        expected = self.model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in sorted(set(state) & set(expected))
            if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
        ]
        if missing or unexpected or shapes:

            def fmt(items):
                return ", ".join(items[:8]) + (
                    f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                )

            parts = []
            if missing:
                parts.append(f"missing keys [{fmt(missing)}]")
            if unexpected:
                parts.append(f"unexpected keys [{fmt(unexpected)}]")
            if shapes:
                parts.append(f"shape mismatches [{fmt(shapes)}]")
            raise CheckpointMismatchError(
                f"Checkpoint {getattr(self, '_loading_path', '?')} does not match the model "
                f"built from the config: "
                + "; ".join(parts)
                + ". Use the config the checkpoint was trained with."
            )
        return super()._load_model(checkpoint)
