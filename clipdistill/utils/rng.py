"""Random-number-generator states of a process (Python, NumPy, torch CPU and CUDA): capture,
restore, seed temporarily. Used for exact resume (``Trainer.state_dict``) and by the training
stream (``clipdistill.data.stream``), which seeds each sample's augmentation by its position."""

import contextlib
import random
from typing import Dict, Iterator

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state", "preserve_rng", "seeded_rng"]


def get_rng_state() -> Dict:
    """The state of every global generator of this process, as plain values and tensors (it
    loads with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    """Restore what ``get_rng_state`` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block without changing the global generators' states (e.g. an evaluation in the
    middle of training, so that a resumed run draws what an uninterrupted one draws)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU generators with ``seed`` for a block, then restore
    their previous states."""
    with preserve_rng():
        seed = int(seed) % (2**32)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        yield
