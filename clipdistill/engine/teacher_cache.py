"""Build the teacher-output cache: run the frozen teacher once over a registered dataset (the
reading side, format and validation: ``clipdistill.data.teacher_cache``).

Work is split in shards of ``SHARD_SIZE`` images; process ``r`` of ``N`` handles shards
``r, r + N, r + 2N, ...`` (``tools/cache_teacher.py --num-gpus N`` starts them with detectron2's
``launch``). A shard is written to a temporary name, checksummed and renamed, then marked done
with a ``.sha256`` file; an interrupted build resumes without recomputing finished shards, and a
shard whose bytes no longer match its marker, or one holding an image whose content changed since
(size, time, sha256 recorded per image), is recomputed.
"""

import glob
import logging
import os
import time
from typing import Dict, List, Optional

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils import comm

from ..data.teacher_cache.geometry import dense_grid_size
from ..data.teacher_cache.store import (
    FORMAT_NAME,
    MANIFEST,
    TeacherCacheError,
    UnreadableManifestError,
    cache_key,
    changed_images,
    check_key,
    dataset_cache_dir,
    describe_changed,
    image_key,
    read_manifest,
    shard_name,
)
from ..modeling.teacher import CLIPTeacher
from ..utils.errors import DataError
from ..utils.fingerprint import file_fingerprint, sha256_file
from ..utils.io import atomic_path, atomic_save_json, atomic_write, remove_stale_temps

__all__ = ["build_teacher_cache", "teacher_targets_for_image", "resize_for_teacher"]

logger = logging.getLogger(__name__)


def resize_for_teacher(image: torch.Tensor, size) -> torch.Tensor:
    """``[B, 3, H, W]`` 0..255 -> float ``[B, 3, *size]``, exactly as ``SegStudent`` resizes the
    training images for the online teacher (bilinear, ``align_corners=False``)."""
    image = image.float()
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def teacher_targets_for_image(teacher, image: torch.Tensor, dense_short_side: int):
    """Cached targets of one image (``[3, H, W]`` 0..255 RGB).

    Returns:
        ``Cg`` ``[C]`` (the whole image resized to ``IMAGE_SIZE`` squared, like the online
        teacher) and ``Td`` ``[C, gh, gw]`` (the image resized so that its shorter side is
        ``dense_short_side``, aspect kept, sides rounded to the patch size), both float32.
    """
    x = image.to(teacher.device)[None].float()
    s = teacher.image_size
    cg = teacher.encode_image(resize_for_teacher(x, (s, s)))[0]
    p = teacher.patch_size
    gh, gw = dense_grid_size(x.shape[-2], x.shape[-1], dense_short_side, p)
    size = (gh * p, gw * p)
    td = teacher.encode_image_dense(resize_for_teacher(x, size), size=size)[0]
    return cg, td


class _ShardImages(torch.utils.data.Dataset):
    def __init__(self, dicts: List[dict], image_format: str):
        self.dicts = dicts
        self.image_format = image_format

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        """``(image [3, H, W] uint8, [size, mtime_ns, sha256] of its file)``."""
        path = self.dicts[i]["file_name"]
        try:
            with open(path, "rb") as f:
                data = f.read()
            fingerprint = file_fingerprint(path, data)
            img = utils.read_image(path, format=self.image_format)
        except OSError as e:
            raise DataError(f"Cannot read image {path}: {e}") from e
        except Exception as e:  # PIL raises several types for damaged files
            raise DataError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e
        return torch.as_tensor(img.transpose(2, 0, 1).copy()), fingerprint


def _shard_fingerprints(path: str) -> Optional[List]:
    """The ``[size, mtime_ns, sha256]`` per image recorded in a shard's metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    text = meta.get("image_files")
    if text is None:
        return None
    out = []
    for item in text.split(";"):
        size, mtime, digest = item.split(":")
        out.append([int(size), int(mtime), digest])
    return out


def _shard_images_changed(path: str, part: List[dict]) -> list:
    """``[(file, why)]`` of the images of a finished shard that changed since it was written."""
    recorded = _shard_fingerprints(path)
    if recorded is None or len(recorded) != len(part):
        return [(path, "no image fingerprints in the shard")]
    return changed_images(part, recorded, rehash=True)  # cheap next to the teacher's forward


def _shard_done(path: str) -> bool:
    """A finished shard: the file and its ``.sha256`` marker exist and agree."""
    marker = path + ".sha256"
    if not (os.path.isfile(path) and os.path.isfile(marker)):
        return False
    with open(marker) as f:
        parts = f.read().split()
    recorded = parts[0] if parts else ""
    if sha256_file(path) == recorded:
        return True
    logger.warning(f"Teacher cache shard {path} does not match its checksum marker; recomputing.")
    return False


def _write_shard(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> str:
    """Write a shard under a temporary name, checksum it, rename it, then write its marker."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        digest = sha256_file(tmp)
    with atomic_write(path + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    return digest


def _plan(key: dict, dicts: List[dict], shard_size: int, teacher) -> dict:
    num_shards = max(1, -(-len(dicts) // shard_size))
    return {
        "format": FORMAT_NAME,
        "key": key,
        "complete": False,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "embed_dim": int(teacher.embed_dim),
        "patch_size": int(teacher.patch_size),
        "images": [image_key(d) for d in dicts],
        "image_sizes": None,  # filled from the shards when complete
        "shards": [
            {
                "file": shard_name(i, num_shards),
                "num_images": min(shard_size, len(dicts) - i * shard_size),
                "sha256": None,
            }
            for i in range(num_shards)
        ],
    }


def _prepare_dir(cache_dir: str, key: dict, plan: dict, overwrite: bool) -> None:
    """Rank 0: create the folder and the (incomplete) manifest, or check the existing one."""
    os.makedirs(cache_dir, exist_ok=True)
    try:
        manifest = read_manifest(cache_dir)
    except UnreadableManifestError:
        if not overwrite:
            raise
        logger.warning(f"--overwrite: rebuilding the teacher cache in {cache_dir}.")
        _remove_shards(cache_dir)
        manifest = None
    if manifest is not None:
        same = manifest.get("key") == key and manifest.get("shard_size") == plan["shard_size"]
        if not same and overwrite:
            logger.warning(f"--overwrite: removing the stale teacher cache in {cache_dir}.")
            _remove_shards(cache_dir)
            manifest = None
        elif manifest.get("key") != key:
            check_key(cache_dir, manifest.get("key", {}), key)
        elif not same:
            raise TeacherCacheError(
                f"Teacher cache {cache_dir} was planned with SHARD_SIZE "
                f"{manifest.get('shard_size')}, not {plan['shard_size']}; resume it with the same "
                "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE or build with --overwrite."
            )
    if manifest is None:
        atomic_save_json(os.path.join(cache_dir, MANIFEST), plan)


def _remove_shards(cache_dir: str) -> None:
    for p in glob.glob(os.path.join(cache_dir, "shard-*")):
        os.remove(p)


def build_teacher_cache(
    cfg,
    dataset_name: str,
    teacher=None,
    cache_dir: Optional[str] = None,
    overwrite: bool = False,
    num_workers: Optional[int] = None,
) -> dict:
    """Build (or resume) the cache of ``dataset_name``; call it in every process of a ``launch``.

    Args:
        cfg: clipdistill config; ``MODEL.CLIPDISTILL.TEACHER.*`` selects the teacher,
            ``MODEL.CLIPDISTILL.TEACHER_CACHE.{DIR,SHARD_SIZE}`` the folder and shard size.
        dataset_name: a registered dataset.
        teacher: a ``CLIPTeacher`` (built from ``cfg`` on this process's device when None).
        cache_dir: the dataset's cache folder (default ``DIR/<dataset_name>``).
        overwrite: replace a stale cache instead of failing.
        num_workers: image-decoding workers (default ``DATALOADER.NUM_WORKERS``).

    Returns:
        ``{"cache_dir", "computed": [shard indices], "skipped": [shard indices], "complete"}`` for
        this process.
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    cc = cfg.MODEL.CLIPDISTILL.TEACHER_CACHE
    cache_dir = cache_dir or dataset_cache_dir(cc.DIR, dataset_name)
    dicts = DatasetCatalog.get(dataset_name)
    if not dicts:
        raise TeacherCacheError(f"Dataset {dataset_name} is empty: nothing to cache.")
    key = cache_key(cfg, dataset_name, dicts)
    if teacher is None:
        teacher = CLIPTeacher(cfg)
        if torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
            teacher = teacher.to(f"cuda:{comm.get_local_rank()}")
    plan = _plan(key, dicts, int(cc.SHARD_SIZE), teacher)

    error = None
    if rank == 0:
        try:
            _prepare_dir(cache_dir, key, plan, overwrite)
        except Exception as e:  # re-raised after the barrier so that no process waits forever
            error = e
    comm.synchronize()
    if error is not None:
        raise error
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise TeacherCacheError(f"Teacher cache {cache_dir}: {MANIFEST} was not created.")
    check_key(cache_dir, manifest.get("key", {}), key)

    num_shards = plan["num_shards"]
    shard_size = plan["shard_size"]
    dense_side = int(cfg.MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE)
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    computed, skipped = [], []
    for s in range(rank, num_shards, world):
        path = os.path.join(cache_dir, shard_name(s, num_shards))
        part = dicts[s * shard_size : (s + 1) * shard_size]
        if _shard_done(path):
            changed = _shard_images_changed(path, part)
            if not changed:
                skipped.append(s)
                logger.info(f"Teacher cache: shard {s + 1}/{num_shards} already finished, skipped.")
                continue
            logger.warning(
                f"Teacher cache: shard {s + 1}/{num_shards} is recomputed: "
                f"{describe_changed(changed)}"
            )
        loader = torch.utils.data.DataLoader(
            _ShardImages(part, cfg.INPUT.FORMAT),
            batch_size=None,
            num_workers=workers,
        )
        start = time.perf_counter()
        globals_, tensors, sizes, files = [], {}, [], []
        for j, (image, fingerprint) in enumerate(loader):
            cg, td = teacher_targets_for_image(teacher, image, dense_side)
            globals_.append(cg.half().cpu())
            tensors[f"dense.{j}"] = td.half().cpu().contiguous()
            sizes.append([int(image.shape[-2]), int(image.shape[-1])])
            files.append(":".join(str(v) for v in fingerprint))
        tensors["global"] = torch.stack(globals_).contiguous()
        meta = {
            "images": "\n".join(image_key(d) for d in part),
            "image_sizes": ";".join(f"{h}x{w}" for h, w in sizes),
            "image_files": ";".join(files),
            "dataset": dataset_name,
        }
        _write_shard(path, tensors, meta)
        computed.append(s)
        logger.info(
            f"Teacher cache: shard {s + 1}/{num_shards} ({len(part)} images) written in "
            f"{time.perf_counter() - start:.1f}s to {path}"
        )
    comm.synchronize()

    complete = False
    if rank == 0:
        complete = _finalize(cache_dir, manifest)
    comm.synchronize()
    return {"cache_dir": cache_dir, "computed": computed, "skipped": skipped, "complete": complete}


def _finalize(cache_dir: str, manifest: dict) -> bool:
    """Rank 0, after every process finished: record checksums and image sizes, mark complete."""
    from safetensors import safe_open

    sizes: List[List[int]] = []
    files: List[List] = []
    for s in manifest["shards"]:
        path = os.path.join(cache_dir, s["file"])
        marker = path + ".sha256"
        if not (os.path.isfile(path) and os.path.isfile(marker)):
            logger.warning(f"Teacher cache {cache_dir}: shard {s['file']} unfinished.")
            return False
        with open(marker) as f:
            s["sha256"] = f.read().split()[0]
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        sizes += [[int(v) for v in hw.split("x")] for hw in meta["image_sizes"].split(";")]
        files += _shard_fingerprints(path) or []
    if len(sizes) != len(manifest["images"]) or len(files) != len(sizes):
        raise TeacherCacheError(
            f"Teacher cache {cache_dir}: shards hold {len(sizes)} images, the manifest lists "
            f"{len(manifest['images'])}."
        )
    manifest["image_sizes"] = sizes
    manifest["image_files"] = files
    manifest["complete"] = True
    atomic_save_json(os.path.join(cache_dir, MANIFEST), manifest)
    remove_stale_temps(cache_dir)  # left by interrupted writers
    logger.info(f"Teacher cache {cache_dir} complete: {len(sizes)} images.")
    return True
