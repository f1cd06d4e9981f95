"""Fingerprints: the one rule for what "the same input" means in every cache of clipdistill.

**The rule: the same input is the same content.**

* A file is the same when its bytes are: its sha256. Its size and modification time only decide
  whether it must be read again (``file_sha256`` hashes a file once per process and content;
  ``file_change`` trusts an unchanged size and time, and re-hashes a file whose time changed but
  whose size did not, so a ``touch`` or a copy is not a change).
* Anything else (a config, a vocabulary, a list of image keys, a prompt-template set) is the same
  when its canonical JSON is: ``digest(obj)``.
* A weights setting is what ``weights_identity`` says it is: an open_clip tag, the sha256 of a
  local file's content, or the seeded random initialisation.

The caches built on it: the text embeddings on disk (``modeling.clip.text.TextEncoder``), the
teacher-output cache (``data.teacher_cache``: per-image ``file_fingerprint`` and
``file_change``), the prediction cache and the pseudo-labels (``engine.prediction_cache``,
``engine.pseudo_labels``: ``config_fingerprint``).
"""

import hashlib
import json
import os
from functools import lru_cache
from typing import Any, List, Optional, Sequence

import torch

__all__ = [
    "sha256_file",
    "sha256_bytes",
    "state_dict_sha256",
    "file_sha256",
    "digest",
    "file_fingerprint",
    "file_change",
    "RANDOM_INIT_SEED",
    "is_random_init",
    "weights_identity",
]

#: seed of the random initialisation of a model built without weights (tests, toy configs)
RANDOM_INIT_SEED = 0


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content (read now)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def state_dict_sha256(module) -> str:
    """Hex sha256 of a module's current weights (``state_dict``: names, dtypes, shapes and
    values), e.g. of a model whose weights training has changed since it was loaded."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@lru_cache(maxsize=256)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed by (path, size, mtime): a file is hashed once per process while it is unchanged
    return sha256_file(path)


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's content, computed once per process while the file's size and
    modification time stay the same."""
    path = os.path.abspath(os.path.expanduser(path))
    st = os.stat(path)
    return _cached_sha256(path, st.st_size, st.st_mtime_ns)


def digest(obj: Any, length: Optional[int] = None) -> str:
    """Hex sha256 of ``obj``'s canonical JSON (sorted keys), optionally cut to ``length``."""
    text = json.dumps(obj, sort_keys=True)
    out = sha256_bytes(text.encode("utf-8"))
    return out[:length] if length else out


def file_fingerprint(path: str, data: Optional[bytes] = None) -> List:
    """``[size in bytes, mtime in ns, sha256]`` of a file (``data``: its bytes, when already
    read), as recorded by a cache for ``file_change``."""
    st = os.stat(path)
    content = sha256_file(path) if data is None else sha256_bytes(data)
    return [int(st.st_size), int(st.st_mtime_ns), content]


def file_change(path: str, recorded: Sequence, rehash: bool = False) -> Optional[str]:
    """What changed in the file ``path`` since its ``file_fingerprint`` ``recorded``: None when
    it is the same input, else ``"missing"``, ``"size A -> B bytes"`` or ``"content (sha256)
    changed"``. Size and time are compared first; a file with a new time but the same size is
    re-hashed, and with ``rehash`` every file of the same size is (new content under the same
    size and time: a copy that keeps times, a clock reset)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    size, mtime, content = recorded
    if st.st_size == size and st.st_mtime_ns == mtime and not rehash:
        return None
    if st.st_size != size:
        return f"size {size} -> {st.st_size} bytes"
    if sha256_file(path) != content:
        return "content (sha256) changed"
    return None


def is_random_init(weights: str) -> bool:
    """True when ``weights`` asks for the seeded random initialisation (tests, toy configs)."""
    return not weights


def weights_identity(weights: str) -> str:
    """What a weights setting is, independent of where it is: the open_clip tag, the sha256 of a
    local file's content (copying the file elsewhere keeps caches valid, changing it invalidates
    them), or the seeded random initialisation."""
    if is_random_init(weights):
        return f"random-init(seed={RANDOM_INIT_SEED})"
    expanded = os.path.expanduser(weights)
    if os.path.isfile(expanded):
        return "file-sha256:" + file_sha256(expanded)
    return f"open_clip-tag:{weights}"
