"""Teacher-output cache: round trip against the online teacher, crop/flip geometry, resume,
damaged and stale caches, training from the cache, and a 2-process build."""

import json
import os
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from clipdistill.data import SemSegDatasetMapper
from clipdistill.modeling.teacher import CLIPTeacher
from clipdistill.data.teacher_cache import (
    DamagedShardError,
    StaleTeacherCacheError,
    TeacherCache,
    TeacherCacheError,
    cache_key,
    dataset_cache_dir,
    image_key,
    open_teacher_caches,
    sample_dense,
    transforms_to_affine,
)
from clipdistill.engine.teacher_cache import build_teacher_cache, resize_for_teacher
from common import REPO, tiny_cfg, write_image

SIZES = [(64, 64), (64, 96), (80, 64), (48, 72), (64, 64)]  # (H, W); 5 images, 3 shards of 2
ATOL = 3e-3  # float16 storage of unit vectors


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_ds")
    rng = np.random.default_rng(0)
    dicts = []
    for i, (h, w) in enumerate(SIZES):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lab = rng.integers(0, 20, (h, w), dtype=np.uint8)
        write_image(str(root / "img" / f"{i}.png"), img)
        write_image(str(root / "lab" / f"{i}.png"), lab)
        dicts.append(
            {
                "file_name": str(root / "img" / f"{i}.png"),
                "sem_seg_file_name": str(root / "lab" / f"{i}.png"),
                "height": h,
                "width": w,
            }
        )
    name = f"cache_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(
        stuff_classes=list(MetadataCatalog.get("voc20_sem_seg_train").stuff_classes),
        ignore_label=255,
        evaluator_type="sem_seg",
    )
    yield name, dicts
    DatasetCatalog.remove(name)


def _cfg(dataset_name, cache_root, *opts):
    return tiny_cfg(
        "DATASETS.TRAIN",
        f"('{dataset_name}',)",
        "MODEL.CLIPDISTILL.TEACHER_CACHE.DIR",
        str(cache_root),
        "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED",
        "True",
        "MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT",
        "0.5",
        *opts,
    )


@pytest.fixture(scope="module")
def teacher():
    return CLIPTeacher(tiny_cfg())


class CountingTeacher:
    """Proxy of the teacher counting encode_image calls; optionally fails after ``fail_after``."""

    def __init__(self, teacher, fail_after=None):
        self.t, self.calls, self.fail_after = teacher, 0, fail_after

    def __getattr__(self, name):
        return getattr(self.t, name)

    def encode_image(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return self.t.encode_image(x)


@pytest.fixture(scope="module")
def built(dataset, teacher, tmp_path_factory):
    name, dicts = dataset
    root = tmp_path_factory.mktemp("cache")
    cfg = _cfg(name, root)
    res = build_teacher_cache(cfg, name, teacher=teacher)
    assert res["complete"] and res["computed"] == [0, 1, 2]
    return cfg, dataset_cache_dir(str(root), name)


def _image(d):
    from detectron2.data import detection_utils as utils

    return torch.as_tensor(utils.read_image(d["file_name"], "RGB").transpose(2, 0, 1).copy())


def test_roundtrip_equals_online_teacher(built, dataset, teacher):
    cfg, cache_dir = built
    cache = TeacherCache(cache_dir, cache_key(cfg, dataset[0]))
    manifest = json.load(open(os.path.join(cache_dir, "manifest.json")))
    assert manifest["complete"] and len(manifest["shards"]) == 3
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    for d in dataset[1]:
        cg, td, hw = cache.get(image_key(d))
        assert cg.dtype == td.dtype == torch.float16
        img = _image(d)[None].float()
        assert tuple(hw) == tuple(img.shape[-2:])
        online_cg = teacher.encode_image(resize_for_teacher(img, (224, 224)))[0]
        torch.testing.assert_close(cg.float(), online_cg, atol=ATOL, rtol=0)
        # dense: the whole image, shorter side = DENSE_IMAGE_SIZE (64), aspect kept
        size = (td.shape[1] * 16, td.shape[2] * 16)
        assert min(size) == 64
        online_td = teacher.encode_image_dense(resize_for_teacher(img, size), size=size)[0]
        torch.testing.assert_close(td.float(), online_td, atol=ATOL, rtol=0)


def test_unaugmented_mapper_targets_equal_the_online_student_targets(built, dataset):
    """No augmentation, square image: the mapper's targets are exactly what SegStudent's online
    teacher computes for that image (global at 224, dense at DENSE_IMAGE_SIZE)."""
    cfg, _ = built
    model = build_model(cfg)
    mapper = SemSegDatasetMapper(cfg, True)
    mapper.augmentations = T.AugmentationList([])
    d = dataset[1][0]  # 64 x 64
    out = mapper(dict(d))
    inputs = [out]
    size = model.teacher.image_size
    cg = model.teacher.encode_image(model._teacher_batch(inputs, (size, size)))[0]
    torch.testing.assert_close(out["teacher_global"].float(), cg, atol=ATOL, rtol=0)
    ds = model.teacher.dense_image_size
    td = model.teacher.encode_image_dense(model._teacher_batch(inputs, (ds, ds)), size=(ds, ds))[0]
    assert out["teacher_dense"].shape == td.shape == (64, 4, 4)
    torch.testing.assert_close(out["teacher_dense"].float(), td, atol=ATOL, rtol=0)


def test_resize_crop_flip_is_the_defined_crop_of_the_online_map(built, dataset, teacher):
    """Resize x2, crop, h-flip: on a crop aligned with the cached grid, the warped map is exactly
    the flipped crop of the online teacher's dense map of the whole image."""
    cfg, cache_dir = built
    cache = TeacherCache(cache_dir, cache_key(cfg, dataset[0]))
    d = dataset[1][1]  # H 64 x W 96 -> cached grid 4 x 6
    cg, td, hw = cache.get(image_key(d))
    img = _image(d)[None].float()
    online = teacher.encode_image_dense(img, size=(64, 96))[0]  # [C, 4, 6]
    # resized to 128 x 192, crop x 32..96, y 64..128 (= original x 16..48, y 32..64), flip
    tfms = [
        T.ResizeTransform(64, 96, 128, 192),
        T.CropTransform(32, 64, 64, 64),
        T.HFlipTransform(64),
    ]
    affine = transforms_to_affine(tfms)
    assert affine == (-0.5, 48.0, 0.5, 32.0)
    warped = sample_dense(td, hw, affine, (64, 64), (2, 2))
    expected = F.normalize(online[:, 2:4, 1:3].flip(-1), dim=0)
    torch.testing.assert_close(warped, expected, atol=ATOL, rtol=0)
    # through the mapper (the online grid, 4 x 4): flipping the crop flips the target
    mapper = SemSegDatasetMapper(cfg, True)
    mapper.augmentations = T.AugmentationList(tfms)
    flipped = mapper(dict(d))
    mapper.augmentations = T.AugmentationList(tfms[:2])
    plain = mapper(dict(d))
    assert flipped["teacher_dense"].shape == (64, 4, 4)
    torch.testing.assert_close(flipped["teacher_dense"], plain["teacher_dense"].flip(-1))
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    norms = flipped["teacher_dense"].float().norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=ATOL, rtol=0)
    # GLOBAL_TARGET "image": the cached whole-image embedding, whatever the crop
    assert torch.equal(flipped["teacher_global"], cg)
    # GLOBAL_TARGET "crop_pool": the normalised mean of the warped dense map
    pool_cfg = cfg.clone()
    pool_cfg.defrost()
    pool_cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.GLOBAL_TARGET = "crop_pool"
    mapper = SemSegDatasetMapper(pool_cfg, True)
    mapper.augmentations = T.AugmentationList(tfms)
    out = mapper(dict(d))
    pooled = F.normalize(out["teacher_dense"].float().mean((1, 2)), dim=0)
    torch.testing.assert_close(out["teacher_global"].float(), pooled, atol=ATOL, rtol=0)
    # loss_dense off and the "image" global target: the dense map is neither read nor warped
    no_dense = cfg.clone()
    no_dense.defrost()
    no_dense.MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT = 0.0
    out = SemSegDatasetMapper(no_dense, True)(dict(d))
    assert "teacher_dense" not in out and out["teacher_global"].shape == (64,)


def test_resume_after_interruption_skips_finished_shards(dataset, teacher, tmp_path):
    name, dicts = dataset
    cfg = _cfg(name, tmp_path)
    cache_dir = dataset_cache_dir(str(tmp_path), name)
    first = CountingTeacher(teacher, fail_after=3)  # dies on the 2nd image of shard 1
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(cfg, name, teacher=first)
    assert first.calls == 3
    files = sorted(os.listdir(cache_dir))
    assert "shard-00000-of-00003.safetensors.sha256" in files
    assert not any(f.startswith("shard-00001") for f in files)
    assert not any(f.startswith(".tmp-") for f in files)  # the partial write was removed
    open(os.path.join(cache_dir, ".tmp-leftover.safetensors"), "wb").write(b"x")  # kill -9
    with pytest.raises(TeacherCacheError, match=r"incomplete.*interrupted"):
        open_teacher_caches(cfg, [name])
    second = CountingTeacher(teacher)
    res = build_teacher_cache(cfg, name, teacher=second)
    assert res == {"cache_dir": cache_dir, "computed": [1, 2], "skipped": [0], "complete": True}
    assert second.calls == 3  # shards 1 and 2 only: 2 + 1 images
    assert not any(f.startswith(".tmp-") for f in os.listdir(cache_dir))
    third = CountingTeacher(teacher)
    assert build_teacher_cache(cfg, name, teacher=third)["skipped"] == [0, 1, 2]
    assert third.calls == 0
    assert len(open_teacher_caches(cfg, [name]).caches[0]) == 5


def test_damaged_shard_is_named(built, dataset, teacher, tmp_path):
    cfg, cache_dir = built
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(cache_dir, copy)
    shard = os.path.join(copy, "shard-00001-of-00003.safetensors")
    with open(shard, "r+b") as f:
        f.seek(-7, os.SEEK_END)
        f.write(b"\x00garbage"[:7])
    cache = TeacherCache(copy, cache_key(cfg, dataset[0]))
    cache.get(image_key(dataset[1][0]))  # shard 0 is fine
    with pytest.raises(DamagedShardError, match=r"shard-00001-of-00003\.safetensors is damaged"):
        cache.get(image_key(dataset[1][2]))
    with pytest.raises(DamagedShardError, match="shard-00001"):
        cache.verify_all()
    # resuming the build recomputes that shard only
    counting = CountingTeacher(teacher)
    res = build_teacher_cache(cfg, dataset[0], teacher=counting, cache_dir=copy)
    assert res["computed"] == [1] and counting.calls == 2
    TeacherCache(copy, cache_key(cfg, dataset[0])).verify_all()


def test_stale_or_missing_cache_is_named(built, dataset, tmp_path):
    cfg, cache_dir = built
    name = dataset[0]
    for opts, field in [
        (
            ("MODEL.CLIPDISTILL.TEACHER.NAME", "ViT-B-16"),
            "teacher: cache has 'ViT-T-16-toy', " "config wants 'ViT-B-16'",
        ),
        (("MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE", "96"), "dense_short_side: cache has 64"),
        (("MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE", "160"), "image_size: cache has 224"),
        (
            ("MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD", "maskclip"),
            "dense_method: cache has 'value_only', config wants 'maskclip'",
        ),
    ]:
        stale = cfg.clone()
        stale.merge_from_list(list(opts))
        with pytest.raises(StaleTeacherCacheError) as e:
            open_teacher_caches(stale, [name])
        assert cache_dir in str(e.value) and field in str(e.value), str(e.value)
    # through the training mapper, with the flag on
    stale = cfg.clone()
    stale.merge_from_list(["MODEL.CLIPDISTILL.TEACHER.NAME", "ViT-B-16"])
    with pytest.raises(StaleTeacherCacheError, match="ViT-B-16"):
        SemSegDatasetMapper(stale, True)
    missing = cfg.clone()
    missing.merge_from_list(["MODEL.CLIPDISTILL.TEACHER_CACHE.DIR", str(tmp_path / "none")])
    with pytest.raises(TeacherCacheError, match=r"No teacher cache at .*none.*cache_teacher\.py"):
        SemSegDatasetMapper(missing, True)


def test_training_step_from_the_cache(built, dataset):
    cfg, _ = built
    mapper = SemSegDatasetMapper(cfg, True)  # toy augmentation: resize, 128 crop, flip
    batch = [mapper(dict(d)) for d in dataset[1][:3]]
    assert all(b["teacher_dense"].shape == (64, 4, 4) for b in batch)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()

    def no_teacher(*a, **k):
        raise AssertionError("the online teacher ran although the cache is enabled")

    model.teacher.encode_image = model.teacher.encode_image_dense = no_teacher
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_ce", "loss_global", "loss_local", "loss_dense"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stripped = [{k: v for k, v in b.items() if not k.startswith("teacher_")} for b in batch]
    with EventStorage(), pytest.raises(ValueError, match="teacher_global"):
        model(stripped)


def test_two_process_build_with_launch(tmp_path):
    """--num-gpus 2 on the CPU: two gloo processes share the shards, then --verify."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), HF_HUB_OFFLINE="1")
    run = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    p = subprocess.run(
        [
            sys.executable,
            "tools/make_toy_dataset.py",
            "--dataset",
            "voc_toy",
            "--num-train",
            "2",
            "--num-val",
            "10",
            "--size",
            "64",
        ],
        **run,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    cache_root = tmp_path / "cache"
    args = [
        sys.executable,
        "tools/cache_teacher.py",
        "--config-file",
        os.path.join(
            REPO, "configs", "segstudent", "segstudent_effb0_toyclip_voc20toy_300_cached.yaml"
        ),
        "--dataset",
        "voc20_toy_sem_seg_val",
        "MODEL.CLIPDISTILL.TEACHER_CACHE.DIR",
        str(cache_root),
        "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE",
        "3",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE",
        "64",
    ]
    with socket.socket() as sock:  # a free port: other runs may use detectron2's default one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.run(
        args[:4] + ["--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}"] + args[4:], **run
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    assert "rank 0: voc20_toy_sem_seg_val: computed shards [0, 2]" in log, log[-3000:]
    assert "rank 1: voc20_toy_sem_seg_val: computed shards [1, 3]" in log, log[-3000:]
    manifest = json.load(open(cache_root / "voc20_toy_sem_seg_val" / "manifest.json"))
    assert manifest["complete"] and len(manifest["images"]) == 10
    p = subprocess.run(args[:4] + ["--verify"] + args[4:], **run)
    assert p.returncode == 0 and "all shards verified" in p.stdout + p.stderr
