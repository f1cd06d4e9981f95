"""Strict, atomic checkpointing of any clipdistill segmenter, with per-architecture key
conversion and a resume that survives damaged checkpoints."""

import contextlib
import glob
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.parallel import DistributedDataParallel

from ..modeling.segmenter import OpenVocabSegmenter
from ..utils.errors import UserError
from ..utils.fingerprint import sha256_file
from ..utils.io import atomic_write, is_temp_name, remove_stale_temps
from ..utils.safe_pickle import restricted_load

__all__ = ["SegmenterCheckpointer", "CheckpointMismatchError", "UnreadableCheckpointError"]

LAST_CHECKPOINT = "last_checkpoint"
#: each checkpoint's sha256, written beside it (``model_final.pth.sha256``) and checked on load
CHECKSUM_SUFFIX = ".sha256"


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint whose keys or shapes do not match the model."""


class UnreadableCheckpointError(UserError, RuntimeError):
    """A checkpoint file that is truncated, damaged or not a checkpoint (names the file)."""


class SegmenterCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses partial loads, for any segmenter.

    detectron2 loads checkpoints with ``strict=False`` and only logs missing/unexpected keys or
    shape mismatches; evaluating such a half-loaded model gives silently wrong numbers. Here the
    checkpoint's keys first go through the model's ``convert_checkpoint`` hook (which maps an
    official release's names onto clipdistill's, see ``OpenVocabSegmenter``), then any difference
    from ``model.state_dict()`` (which never contains frozen auxiliary modules such as the
    student's teacher) raises :class:`CheckpointMismatchError` naming the keys.

    Writing: a checkpoint and ``last_checkpoint`` are written to a temporary file and renamed
    (``clipdistill.utils.io.atomic_write``), so a kill or a full disk never leaves a partial
    checkpoint, and ``last_checkpoint`` always names a complete one. Each checkpoint's sha256 is
    written beside it (``<name>.pth.sha256``) and checked when it is loaded, so a damaged byte
    that torch's loader would not notice makes it unreadable too. Overwriting a checkpoint that
    this checkpointer did not write (an earlier run's) is logged.

    Reading: ``.pth`` files are loaded weights-only (torch's default) and ``.pkl`` files with a
    restricted unpickler (``clipdistill.utils.safe_pickle``), so no weights file runs code. A
    truncated or damaged file, or one that is not a checkpoint, raises
    :class:`UnreadableCheckpointError` naming it. ``resume_or_load(resume=True)`` falls back from
    an unreadable last checkpoint (or an empty or dangling ``last_checkpoint``) to the newest
    readable checkpoint of ``save_dir``, saying which and why.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: files this checkpointer wrote (overwriting any other one is logged)
        self._written = set()
        #: the checkpoint ``resume_or_load`` resumed from (None: it did not resume)
        self.resumed_from: Optional[str] = None

    # ------------------------------------------------------------------------------ writing
    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save`` (model, checkpointables and ``kwargs`` in ``<save_dir>/<name>.pth``),
        written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        if os.path.exists(path) and os.path.abspath(path) not in self._written:
            self.logger.warning(
                f"Overwriting {path}, written by an earlier run"
                + (" (this run resumed from it)" if self.resumed_from == path else "")
            )
        self.logger.info(f"Saving checkpoint to {path}")
        sidecar = path + CHECKSUM_SUFFIX
        with atomic_write(path) as f:
            torch.save(data, f)
            f.flush()
            digest = sha256_file(f.name)
            # the old checksum goes before the new file takes the name (a kill in between
            # leaves a checkpoint without a checksum, loaded unchecked, never a wrong one)
            with contextlib.suppress(FileNotFoundError):
                os.remove(sidecar)
        with atomic_write(sidecar, "w") as f:
            f.write(f"{digest}  {basename}\n")
        self._written.add(os.path.abspath(path))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT), "w") as f:
            f.write(last_filename_basename)

    # ------------------------------------------------------------------------------ reading
    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"Checkpoint {path} does not exist (MODEL.WEIGHTS or the last checkpoint in "
                f"OUTPUT_DIR); pass an existing file, e.g. MODEL.WEIGHTS output/model_final.pth"
            )
        self._loading_path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None  # detectron2 leaves it set when a load fails

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """detectron2's, but a ``.pkl`` (detectron2 model zoo, Caffe2) is read with a restricted
        unpickler (numpy arrays and plain containers only: a crafted file cannot run code)."""
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)
        try:
            with open(filename, "rb") as f:
                data = restricted_load(f, encoding="latin1")
            if not isinstance(data, dict):
                raise TypeError(f"a {type(data).__name__}, not a dict")
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise UnreadableCheckpointError(
                f"Checkpoint {filename} is unreadable as .pkl weights (only numpy arrays in plain "
                f"containers are loaded): {type(e).__name__}: {first}"
            ) from e
        if "model" in data and "__author__" in data:  # detectron2 model-zoo format
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        if "blobs" in data:  # Caffe2 / Detectron1 model zoo
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f: str) -> Dict[str, Any]:
        sidecar = f + CHECKSUM_SUFFIX
        if os.path.isfile(sidecar):
            with open(sidecar, encoding="utf-8", errors="replace") as fh:
                expected = (fh.read().split() or [""])[0]
            actual = sha256_file(f)
            if actual != expected:
                raise UnreadableCheckpointError(
                    f"Checkpoint {f} is unreadable (damaged): its sha256 {actual} differs from "
                    f"{expected}, recorded in {sidecar} when it was written"
                )
        try:
            loaded = super()._torch_load(f)
        except Exception as e:  # EOFError, zip errors, unpickling errors...
            first = str(e).splitlines()[0] if str(e) else ""
            raise UnreadableCheckpointError(
                f"Checkpoint {f} is unreadable (truncated, damaged or not a PyTorch checkpoint): "
                f"{type(e).__name__}: {first}"
            ) from e
        if not isinstance(loaded, dict):
            raise UnreadableCheckpointError(
                f"Checkpoint {f} holds a {type(loaded).__name__}, not a checkpoint (a dict with "
                "'model', or a state dict)"
            )
        return loaded

    # ------------------------------------------------------------------------------ resuming
    def _resume_candidates(self) -> Tuple[List[str], List[str]]:
        """Checkpoints to resume from, best first (the one ``last_checkpoint`` names, then the
        others newest first), and notes on what was wrong with ``last_checkpoint``."""
        notes, first = [], None
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if os.path.isfile(tag):
            with open(tag, encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
            if not name:
                notes.append(f"{tag} is empty")
            elif not os.path.isfile(os.path.join(self.save_dir, name)):
                notes.append(f"{tag} names {name}, which does not exist")
            else:
                first = os.path.join(self.save_dir, name)
        others = [
            p
            for p in glob.glob(os.path.join(glob.escape(self.save_dir), "*.pth"))
            if not is_temp_name(os.path.basename(p)) and p != first
        ]
        others.sort(key=lambda p: os.path.getmtime(p), reverse=True)
        return ([first] if first else []) + others, notes

    def has_checkpoint(self) -> bool:
        return bool(self._resume_candidates()[0])

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest readable checkpoint of ``save_dir`` (when ``resume`` and there
        is one), else load ``path`` (the model only).

        Raises:
            UnreadableCheckpointError: ``resume`` and every checkpoint of ``save_dir`` is
                unreadable (each is named).
        """
        self.resumed_from = None
        if self.save_to_disk and self.save_dir and os.path.isdir(self.save_dir):
            remove_stale_temps(self.save_dir)
        if resume:
            candidates, notes = self._resume_candidates()
            for note in notes:
                self.logger.warning(f"Resume: {note}.")
            failed = []
            for cand in candidates:
                try:
                    out = self.load(cand)
                except UnreadableCheckpointError as e:
                    self.logger.warning(f"Resume: {e}")
                    failed.append(cand)
                    continue
                if failed or notes:
                    self.logger.warning(
                        f"Resumed from {cand}, the newest readable checkpoint"
                        + (f" (unreadable: {', '.join(failed)})" if failed else "")
                    )
                self.resumed_from = cand
                return out
            if failed:
                raise UnreadableCheckpointError(
                    f"Cannot resume: no readable checkpoint in {self.save_dir} (unreadable: "
                    f"{', '.join(failed)}); delete them, or train without --resume"
                )
            if notes:
                self.logger.warning(f"Resume: no checkpoint in {self.save_dir}; starting anew.")
        return self.load(path, checkpointables=[])

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
