"""The teacher cache follows the images' content: a changed image (same name, new pixels) is
named when the cache is opened, a mere ``touch`` is not a change, and re-running the build
recomputes only the shards holding changed images. A truncated manifest is repaired by
``--overwrite``."""

import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from clipdistill.modeling.teacher import CLIPTeacher
from clipdistill.data.teacher_cache import (
    StaleTeacherCacheError,
    TeacherCacheError,
    dataset_cache_dir,
    image_key,
    open_teacher_caches,
)
from clipdistill.engine.teacher_cache import build_teacher_cache, teacher_targets_for_image
from common import tiny_cfg

N = 5  # images; shards of 2 -> 3 shards


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(N):
        p = tmp_path / "img" / f"{i}.bmp"  # BMP: the file size depends on the image size only
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(p)
        dicts.append({"file_name": str(p), "sem_seg_file_name": str(p)})
    name = f"content_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(
        stuff_classes=list(MetadataCatalog.get("voc20_sem_seg_train").stuff_classes),
        ignore_label=255,
    )
    cfg = tiny_cfg(
        "DATASETS.TRAIN",
        f"('{name}',)",
        "MODEL.CLIPDISTILL.TEACHER_CACHE.DIR",
        str(tmp_path / "cache"),
        "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE",
        "2",
        "MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE",
        "32",
        "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE",
        "32",
        "DATALOADER.NUM_WORKERS",
        "0",
    )
    teacher = CLIPTeacher(cfg)
    yield cfg, name, dicts, teacher
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_changed_image_is_named_and_its_shard_recomputed(setup):
    cfg, name, dicts, teacher = setup
    assert build_teacher_cache(cfg, name, teacher=teacher)["computed"] == [0, 1, 2]
    open_teacher_caches(cfg, [name])

    # touched, same bytes: not a change
    t = os.stat(dicts[0]["file_name"]).st_mtime_ns + 10**9
    os.utime(dicts[0]["file_name"], ns=(t, t))
    open_teacher_caches(cfg, [name])

    # image 3 (shard 1) gets new pixels: same file name, same file size, new content
    changed = dicts[3]["file_name"]
    size = os.path.getsize(changed)
    new = np.random.default_rng(9).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(new).save(changed)
    assert os.path.getsize(changed) == size
    with pytest.raises(StaleTeacherCacheError) as e:
        open_teacher_caches(cfg, [name])
    msg = str(e.value)
    assert changed in msg and "1 image(s) changed" in msg
    assert dicts[0]["file_name"] not in msg and dicts[2]["file_name"] not in msg

    res = build_teacher_cache(cfg, name, teacher=teacher)
    assert res["computed"] == [1] and res["skipped"] == [0, 2]
    cache = open_teacher_caches(cfg, [name])
    cg, td, _ = cache.get(image_key(dicts[3]))
    want_cg, want_td = teacher_targets_for_image(
        teacher, torch.as_tensor(new.transpose(2, 0, 1).copy()), 32
    )
    torch.testing.assert_close(cg.float(), want_cg, atol=3e-3, rtol=0)
    torch.testing.assert_close(td.float(), want_td, atol=3e-3, rtol=0)


def test_truncated_manifest_is_named_and_repaired_by_overwrite(setup):
    cfg, name, dicts, teacher = setup
    build_teacher_cache(cfg, name, teacher=teacher)
    manifest = os.path.join(
        dataset_cache_dir(cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.DIR, name), "manifest.json"
    )
    data = open(manifest).read()
    open(manifest, "w").write(data[: len(data) // 3])
    with pytest.raises(TeacherCacheError, match="manifest.json.*--overwrite"):
        build_teacher_cache(cfg, name, teacher=teacher)
    res = build_teacher_cache(cfg, name, teacher=teacher, overwrite=True)
    assert res["complete"] and res["computed"] == [0, 1, 2]
    assert len(open_teacher_caches(cfg, [name]).caches[0]) == N


def test_changed_image_with_the_same_size_and_time_is_detected(setup, capsys):
    """New pixels with the size and the modification time of the old file (a copy that keeps
    times, a clock reset): opening the cache with TEACHER_CACHE.VERIFY (default) re-hashes the
    images, so does ``cache_teacher.py --verify`` (exit status 2 naming the image), and a re-run
    of the build recomputes the shard."""
    from common import TINY_OPTS, VOC20_TOY_CONFIG, load_tool

    cfg, name, dicts, teacher = setup
    build_teacher_cache(cfg, name, teacher=teacher)
    cache_dir = dataset_cache_dir(cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.DIR, name)
    argv = ["--config-file", VOC20_TOY_CONFIG, "--dataset", name, "--verify"] + TINY_OPTS
    argv += ["MODEL.CLIPDISTILL.TEACHER_CACHE.DIR", cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.DIR]
    argv += ["MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE", "32"]
    argv += ["MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE", "32"]
    tool = load_tool("cache_teacher")
    assert tool.invoke_main(argv) == 0

    changed = dicts[3]["file_name"]
    st = os.stat(changed)
    new = np.random.default_rng(9).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(new).save(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(changed).st_size == st.st_size
    with pytest.raises(StaleTeacherCacheError, match="1 image"):
        open_teacher_caches(cfg, [name])
    capsys.readouterr()
    assert tool.invoke_main(argv) == 2
    assert changed in capsys.readouterr().err

    res = build_teacher_cache(cfg, name, teacher=teacher)
    assert res["computed"] == [1] and res["skipped"] == [0, 2]
    open_teacher_caches(cfg, [name])
    assert tool.invoke_main(argv) == 0
    assert os.path.isdir(cache_dir)
