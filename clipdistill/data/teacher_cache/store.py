"""On-disk format of the teacher-output cache (see ``docs/CACHE.md``).

One folder per dataset, ``<MODEL.CLIPDISTILL.TEACHER_CACHE.DIR>/<dataset name>/``::

    manifest.json                                  key, shard plan, per-shard sha256, complete flag
    shard-00000-of-00004.safetensors               float16 tensors of up to SHARD_SIZE images
    shard-00000-of-00004.safetensors.sha256        "done" marker of a finished shard (its checksum)
    ...

A shard holds ``global`` (``[n, C]``, the teacher's whole-image embedding ``Cg``) and one
``dense.<j>`` (``[C, gh, gw]``, the dense map ``Td`` of the whole image computed by
``DENSE_METHOD``, its shorter side resized to ``DENSE_IMAGE_SIZE``) per image; its metadata repeats
the image keys and sizes.

The cache is keyed by (teacher name, weights identity, input sizes, dense method, dataset name +
image list); ``check_key`` names every field that differs. The images' contents are tracked too:
the manifest records each image's size, modification time and sha256 (``image_files``), and
opening a cache names the images that changed since it was built (``TeacherCache.check_images``).
"""

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors import safe_open

from detectron2.data import DatasetCatalog

from ...utils.errors import UserError
from ...utils.fingerprint import file_change, sha256_bytes, sha256_file, weights_identity
from ..datasets.common import datasets_root

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "TeacherCacheError",
    "StaleTeacherCacheError",
    "DamagedShardError",
    "image_key",
    "cache_key",
    "dataset_cache_dir",
    "shard_name",
    "read_manifest",
    "changed_images",
    "check_key",
    "TeacherCache",
    "TeacherCacheSet",
    "open_teacher_caches",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "clipdistill-teacher-cache"
FORMAT_VERSION = 2  # 2: per-image content fingerprints (size, mtime, sha256)
MANIFEST = "manifest.json"
_KEY_DIR = "MODEL.CLIPDISTILL.TEACHER_CACHE.DIR"


class TeacherCacheError(UserError, RuntimeError):
    """A teacher cache is missing, incomplete or unusable."""


class StaleTeacherCacheError(TeacherCacheError):
    """The cache on disk was built for another teacher, input size or dataset, or images of the
    dataset changed since."""


class DamagedShardError(TeacherCacheError):
    """A shard's bytes do not match the sha256 recorded in the manifest."""


def rebuild_hint(dataset_name: str) -> str:
    return (
        "Build or resume it with: python tools/cache_teacher.py --config-file <your config> "
        f"--dataset {dataset_name} [KEY VALUE ...] (same teacher keys as the training config)."
    )


# ---------------------------------------------------------------------------------- identity
def image_key(dataset_dict: dict) -> str:
    """Stable key of an image: its path relative to ``$DETECTRON2_DATASETS`` when inside it (the
    cache survives moving the datasets root), else its absolute path."""
    path = os.path.abspath(dataset_dict["file_name"])
    root = os.path.abspath(datasets_root())
    if path.startswith(root + os.sep):
        return os.path.relpath(path, root).replace(os.sep, "/")
    return path


def cache_key(cfg, dataset_name: str, dataset_dicts: Optional[Sequence[dict]] = None) -> Dict:
    """The key a cache of ``dataset_name`` built with ``cfg``'s teacher must carry."""
    if dataset_dicts is None:
        dataset_dicts = DatasetCatalog.get(dataset_name)
    keys = [image_key(d) for d in dataset_dicts]
    t = cfg.MODEL.CLIPDISTILL.TEACHER
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "teacher": t.NAME,
        "weights": weights_identity(t.WEIGHTS),
        "image_size": int(t.IMAGE_SIZE),
        "dense_short_side": int(t.DENSE_IMAGE_SIZE),
        "dense_method": t.DENSE_METHOD,
        "image_format": cfg.INPUT.FORMAT,
        "dataset": dataset_name,
        "num_images": len(keys),
        "images_sha256": sha256_bytes("\n".join(keys).encode("utf-8")),
        "dtype": "float16",
    }


def dataset_cache_dir(root: str, dataset_name: str) -> str:
    return os.path.join(os.path.expanduser(root), dataset_name)


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.safetensors"


# ---------------------------------------------------------------------------------- files
class UnreadableManifestError(TeacherCacheError):
    """``manifest.json`` is truncated or not a manifest (``--overwrite`` rebuilds the cache)."""


def read_manifest(cache_dir: str) -> Optional[dict]:
    """The manifest of ``cache_dir``, or None when there is none.

    Raises:
        UnreadableManifestError: it is truncated, not JSON, or not a manifest.
    """
    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("key"), dict):
            raise ValueError("not a teacher-cache manifest")
    except (OSError, ValueError) as e:
        raise UnreadableManifestError(
            f"Teacher cache {cache_dir}: unreadable {path} ({e}); rebuild the cache with "
            "tools/cache_teacher.py ... --overwrite"
        ) from e
    return manifest


def changed_images(
    dataset_dicts: Sequence[dict], recorded: Sequence, rehash: bool = False
) -> List[Tuple[str, str]]:
    """``[(file, what changed)]`` of the images whose content differs from their ``recorded``
    ``file_fingerprint`` (same order; the rule of ``clipdistill.utils.fingerprint``; ``rehash``:
    every image is re-hashed, not only those whose time changed)."""
    out = []
    for d, rec in zip(dataset_dicts, recorded):
        change = file_change(d["file_name"], rec, rehash=rehash)
        if change is not None:
            out.append((d["file_name"], change))
    return out


def describe_changed(changed: Sequence[Tuple[str, str]], limit: int = 5) -> str:
    shown = ", ".join(f"{p} ({why})" for p, why in changed[:limit])
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return f"{len(changed)} image(s) changed since the cache was built: {shown}{more}"


def check_key(cache_dir: str, found: dict, expected: dict) -> None:
    """Raise ``StaleTeacherCacheError`` naming the cache and every mismatching field."""
    diffs = [
        f"{k}: cache has {found.get(k)!r}, config wants {expected.get(k)!r}"
        for k in expected
        if found.get(k) != expected.get(k)
    ]
    if diffs:
        raise StaleTeacherCacheError(
            f"Teacher cache {cache_dir} is stale (it was built for another teacher, input size or "
            f"dataset): " + "; ".join(diffs) + ". Delete the folder (or build with --overwrite), "
            "or point " + _KEY_DIR + " elsewhere. " + rebuild_hint(expected.get("dataset", "?"))
        )


# ---------------------------------------------------------------------------------- reading
class TeacherCache:
    """Read-only view of one dataset's complete cache.

    Shards are memory-mapped lazily (``safe_open``) and, with ``verify``, checked against their
    sha256 the first time a process opens them. Picklable (dataloader workers re-open shards).
    """

    def __init__(
        self,
        cache_dir: str,
        expected_key: Optional[dict] = None,
        verify: bool = True,
        dataset_dicts: Optional[Sequence[dict]] = None,
    ):
        """Open the cache; with ``expected_key``, a cache built for anything else is an error;
        with ``dataset_dicts``, so is an image that changed since (``check_images``, which
        re-hashes every image when ``verify``)."""
        self.cache_dir = cache_dir
        self.verify = verify
        manifest = read_manifest(cache_dir)
        name = (expected_key or {}).get("dataset", os.path.basename(cache_dir.rstrip(os.sep)))
        if manifest is None:
            raise TeacherCacheError(
                f"No teacher cache at {cache_dir} ({MANIFEST} is missing). " + rebuild_hint(name)
            )
        if expected_key is not None:
            check_key(cache_dir, manifest.get("key", {}), expected_key)
        if not manifest.get("complete"):
            missing = [s["file"] for s in manifest.get("shards", []) if not s.get("sha256")]
            raise TeacherCacheError(
                f"Teacher cache {cache_dir} is incomplete: {len(missing)} of "
                f"{manifest.get('num_shards')} shards unfinished (e.g. {missing[:3]}); the build "
                "was interrupted. " + rebuild_hint(name)
            )
        self.manifest = manifest
        self.key = manifest["key"]
        self.shard_size = int(manifest["shard_size"])
        self.embed_dim = int(manifest["embed_dim"])
        self.patch_size = int(manifest["patch_size"])
        self.images: List[str] = list(manifest["images"])
        self.image_sizes: List[Tuple[int, int]] = [tuple(s) for s in manifest["image_sizes"]]
        self.index = {k: i for i, k in enumerate(self.images)}
        self.shards = manifest["shards"]
        for s in self.shards:
            path = os.path.join(cache_dir, s["file"])
            if not os.path.isfile(path):
                raise TeacherCacheError(
                    f"Teacher cache {cache_dir}: shard {path} listed in {MANIFEST} is missing. "
                    + rebuild_hint(name)
                )
        self.image_files = manifest.get("image_files")
        self._handles: Dict[int, object] = {}
        if dataset_dicts is not None:
            self.check_images(dataset_dicts, rehash=verify)

    def check_images(
        self, dataset_dicts: Optional[Sequence[dict]] = None, rehash: bool = False
    ) -> None:
        """Raise ``StaleTeacherCacheError`` naming the images (of ``dataset_dicts``, default the
        registered dataset's) whose content differs from the build's: an image of another size
        or (re-hashed) one with another time; with ``rehash``, every image is re-hashed."""
        if dataset_dicts is None:
            dataset_dicts = DatasetCatalog.get(self.key["dataset"])
        if not self.image_files or len(self.image_files) != len(self.images):
            raise StaleTeacherCacheError(
                f"Teacher cache {self.cache_dir} has no image fingerprints (built by an older "
                "version): rebuild it with tools/cache_teacher.py ... --overwrite"
            )
        recorded = []
        for d in dataset_dicts:
            i = self.index.get(image_key(d))
            if i is None:
                raise StaleTeacherCacheError(
                    f"Image {d['file_name']} is not in the teacher cache {self.cache_dir}. "
                    + rebuild_hint(self.key.get("dataset", "?"))
                )
            recorded.append(self.image_files[i])
        changed = changed_images(dataset_dicts, recorded, rehash=rehash)
        if changed:
            raise StaleTeacherCacheError(
                f"Teacher cache {self.cache_dir} is stale: {describe_changed(changed)}. Re-run "
                "tools/cache_teacher.py (same arguments): it recomputes the shards holding them. "
                + rebuild_hint(self.key.get("dataset", "?"))
            )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def shard_path(self, shard: int) -> str:
        return os.path.join(self.cache_dir, self.shards[shard]["file"])

    def verify_shard(self, shard: int) -> None:
        """Raise ``DamagedShardError`` naming the shard when its sha256 differs."""
        path = self.shard_path(shard)
        expected = self.shards[shard]["sha256"]
        actual = sha256_file(path)
        if actual != expected:
            raise DamagedShardError(
                f"Teacher cache shard {path} is damaged: sha256 {actual} differs from {expected} "
                f"in {os.path.join(self.cache_dir, MANIFEST)}. Delete that shard file and its "
                ".sha256 marker and resume the build. " + rebuild_hint(self.key.get("dataset", "?"))
            )

    def verify_all(self) -> None:
        for i in range(len(self.shards)):
            self.verify_shard(i)

    def _handle(self, shard: int):
        h = self._handles.get(shard)
        if h is None:
            if self.verify:
                self.verify_shard(shard)
            h = safe_open(self.shard_path(shard), framework="pt", device="cpu")
            self._handles[shard] = h
        return h

    def get(
        self, key: str, dense: bool = True
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Tuple[int, int]]:
        """``(Cg [C] float16, Td [C, gh, gw] float16 or None when not ``dense``, (H0, W0))`` of
        the image ``key``."""
        i = self.index.get(key)
        if i is None:
            raise KeyError(f"Image {key!r} is not in the teacher cache {self.cache_dir}.")
        shard, j = divmod(i, self.shard_size)
        h = self._handle(shard)
        cg = h.get_slice("global")[j : j + 1][0]
        td = h.get_tensor(f"dense.{j}") if dense else None
        return cg, td, self.image_sizes[i]


class TeacherCacheSet:
    """The caches of several datasets (``DATASETS.TRAIN``), looked up by image key."""

    def __init__(
        self, caches: Sequence[TeacherCache], global_target: str = "image", need_dense: bool = True
    ):
        if global_target not in ("image", "crop_pool"):
            raise ValueError(
                f"MODEL.CLIPDISTILL.TEACHER_CACHE.GLOBAL_TARGET={global_target!r}: use 'image' or "
                "'crop_pool'."
            )
        self.caches = list(caches)
        self.global_target = global_target
        #: read and warp the dense maps (loss_dense or the "crop_pool" global target needs them)
        self.need_dense = need_dense or global_target == "crop_pool"
        dims = {(c.embed_dim, c.patch_size, c.key["dense_short_side"]) for c in self.caches}
        if len(dims) > 1:
            raise TeacherCacheError(f"Teacher caches {[c.cache_dir for c in caches]} disagree.")
        self.embed_dim, self.patch_size, dense_side = dims.pop()
        g = dense_side // self.patch_size
        #: output grid of a warped dense map: the online teacher's (DENSE_IMAGE_SIZE / patch)^2
        self.out_grid = (g, g)

    def get(self, key: str, dense: bool = True):
        for c in self.caches:
            if key in c:
                return c.get(key, dense)
        raise TeacherCacheError(
            f"Image {key!r} is in none of the teacher caches "
            f"{[c.cache_dir for c in self.caches]}; rebuild them for the current dataset."
        )


def open_teacher_caches(cfg, dataset_names: Sequence[str]) -> TeacherCacheSet:
    """Open and validate the caches of ``dataset_names`` for ``cfg`` (stale/missing: an error)."""
    c = cfg.MODEL.CLIPDISTILL.TEACHER_CACHE
    caches = []
    for name in dataset_names:
        directory = dataset_cache_dir(c.DIR, name)
        dicts = DatasetCatalog.get(name)
        caches.append(
            TeacherCache(
                directory, cache_key(cfg, name, dicts), verify=c.VERIFY, dataset_dicts=dicts
            )
        )
    need_dense = cfg.MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT > 0
    return TeacherCacheSet(caches, c.GLOBAL_TARGET, need_dense)
