"""COCO-Stuff, PASCAL Context, ADE20K-150/847 and VOC train-aug: prepare → register → evaluate.

Every test builds a miniature copy of the official format from synthetic content under
``tmp_path`` (never the network), runs the prepare functions, checks the conversions pixel by
pixel, registers the datasets under a temporary name prefix (removed afterwards), loads the
dicts and scores perfect predictions with detectron2's ``SemSegEvaluator`` (mIoU must be 100).
"""

import json
import os
import pickle
import uuid

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from clipdistill.data.datasets.common import load_class_ids, load_class_names
from clipdistill.data.datasets.register_ade20k import register_all_ade20k
from clipdistill.data.datasets.register_coco_stuff import register_all_coco_stuff
from clipdistill.data.datasets.register_pcontext import register_all_pcontext
from clipdistill.data.datasets.register_voc_aug import register_all_voc_aug
from clipdistill.data.prepare import ade20k, coco_stuff, pcontext, voc_aug
from clipdistill.data.prepare.common import PrepareError
from clipdistill.utils.io import atomic_save_image

COCO_UNUSED = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]


# ----------------------------------------------------------------------------------- helpers
@pytest.fixture
def root(tmp_path, monkeypatch):
    r = tmp_path / "datasets"
    r.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(r))
    return r


@pytest.fixture
def prefix():
    """A unique name prefix; every dataset registered under it is removed afterwards."""
    p = f"test_{uuid.uuid4().hex[:8]}_"
    yield p
    for name in [n for n in DatasetCatalog.list() if n.startswith(p)]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def write_jpg(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def perfect_mIoU(name, out_dir, skip=()):
    """Feed one-hot ground truth as predictions to SemSegEvaluator; returns its results."""
    meta = MetadataCatalog.get(name)
    k = len(meta.stuff_classes)
    evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(out_dir))
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        if os.path.basename(d["file_name"]) in skip:
            continue
        gt = np.array(Image.open(d["sem_seg_file_name"]), dtype=np.int64)
        gt[gt >= k] = 0  # ignore pixels: any prediction
        scores = torch.zeros((k,) + gt.shape, dtype=torch.float32)
        scores.scatter_(0, torch.from_numpy(gt)[None], 1.0)
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": scores}])
    return evaluator.evaluate()["sem_seg"]


# ----------------------------------------------------------------------------------- class lists
def test_class_files_load_from_package_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts = {"coco_stuff171.txt": 171, "pcontext59.txt": 59, "pcontext459.txt": 459}
    counts["ade847.txt"] = 847
    for f, n in counts.items():
        assert len(load_class_names(f)) == n, f
    coco_ids = load_class_ids("coco_stuff171_ids.txt")
    assert coco_ids == sorted(set(range(1, 183)) - set(COCO_UNUSED))
    assert load_class_names("coco_stuff171.txt")[0] == "person"
    assert load_class_names("coco_stuff171.txt")[80] == "banner"
    ade_ids = load_class_ids("ade847_ids.txt")
    assert len(ade_ids) == 847 and ade_ids[0] == 2978 and ade_ids[-1] == 3148
    # PC-59 order A: sorted 459-ids, names as in the 459 list except diningtable/table
    pc59, pc459 = load_class_names("pcontext59.txt"), load_class_names("pcontext459.txt")
    pc59_ids = load_class_ids("pcontext59_ids.txt")
    assert pc59_ids == sorted(pc59_ids)
    assert [pc459[i - 1] for i in pc59_ids] == ["table" if n == "diningtable" else n for n in pc59]
    assert pc459[0] == "accordion" and pc459[-1] == "wool" and pc459[430] == "unknown"


def test_atomic_save_uint16_tiff_roundtrip(tmp_path):
    a = np.array([[0, 1, 458, 846], [65535, 2, 3, 4]], dtype=np.uint16)
    p = str(tmp_path / "x.tif")
    atomic_save_image(p, a)
    with Image.open(p) as im:
        assert im.mode == "I;16"
        assert np.array_equal(np.asarray(im), a)
    assert os.listdir(tmp_path) == ["x.tif"]  # no temp file left behind


# ----------------------------------------------------------------------------------- COCO-Stuff
def make_coco(root, split="val2017", n=3, h=12, w=16):
    coco = root / "coco"
    raw_values = np.array([0, 11, 12, 90, 91, 181, 255, 5], dtype=np.uint8)
    for i in range(n):
        stem = f"{i:012d}"
        write_jpg(str(coco / split / f"{stem}.jpg"), h, w, seed=i)
        raw = raw_values[(np.arange(h * w).reshape(h, w) + i) % len(raw_values)]
        write_png(str(coco / "stuffthingmaps" / split / f"{stem}.png"), raw)
    return coco


def coco_expected(raw):
    ids = load_class_ids("coco_stuff171_ids.txt")
    m = {cid - 1: i for i, cid in enumerate(ids)}
    return np.vectorize(lambda v: m.get(int(v), 255))(raw).astype(np.uint8)


def test_coco_stuff_prepare_register_evaluate(root, prefix, tmp_path):
    coco = make_coco(root)
    assert coco_stuff.main(["--root", str(root), "--splits", "val2017", "--workers", "1"]) == 0
    src, dst = coco / "stuffthingmaps" / "val2017", coco / "stuffthingmaps_detectron2" / "val2017"
    for f in sorted(os.listdir(src)):
        raw, out = read(src / f), read(dst / f)
        assert out.dtype == np.uint8
        assert np.array_equal(out, coco_expected(raw))
    raw, out = read(src / sorted(os.listdir(src))[0]), read(dst / sorted(os.listdir(src))[0])
    assert set(np.unique(out[raw == 91])) == {80}  # COCO id 92 "banner" → 80
    assert set(np.unique(out[raw == 181])) == {170}  # COCO id 182 "wood" → 170
    assert set(np.unique(out[raw == 11])) == {255}  # unused COCO id 12 → ignore
    assert set(np.unique(out[raw == 255])) == {255}

    register_all_coco_stuff(str(root), prefix=prefix)
    name = f"{prefix}coco_stuff_sem_seg_val"
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == 171 and meta.ignore_label == 255
    assert meta.stuff_dataset_id_to_contiguous_id[92] == 80
    assert len(meta.stuff_colors) == 171
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and dicts[0]["file_name"].endswith("000000000000.jpg")

    out_dir = tmp_path / "eval"
    res = perfect_mIoU(name, out_dir)
    assert res["mIoU"] == pytest.approx(100.0)
    with open(out_dir / "sem_seg_predictions.json") as f:
        preds = json.load(f)
    cat_ids = {p["category_id"] for p in preds}
    # dataset (COCO) ids, not contiguous indices: 1 (person), 13 (stop sign), 92, 182, ...
    assert {1, 13, 92, 182} <= cat_ids
    assert cat_ids <= set(load_class_ids("coco_stuff171_ids.txt"))


def test_coco_stuff_rerun_after_interruption(root):
    coco = make_coco(root, n=4)
    dst = coco / "stuffthingmaps_detectron2" / "val2017"
    first = coco_stuff.prepare_coco_stuff(str(root), ["val2017"], workers=1)
    assert first == {"val2017": {"written": 4, "skipped": 0}}
    good = {f: read(dst / f).copy() for f in os.listdir(dst)}
    names = sorted(good)
    # interrupted run: a stale temp file, a missing output and a truncated output
    (dst / f".{names[0]}.tmp").write_bytes(b"half a png")
    os.remove(dst / names[0])
    data = (dst / names[1]).read_bytes()
    (dst / names[1]).write_bytes(data[: len(data) // 2])
    second = coco_stuff.prepare_coco_stuff(str(root), ["val2017"], workers=2)
    assert second == {"val2017": {"written": 2, "skipped": 2}}
    assert sorted(os.listdir(dst)) == names
    for f in names:
        assert np.array_equal(read(dst / f), good[f])


def test_coco_stuff_damaged_input_names_file(root, capsys):
    coco = make_coco(root, n=2)
    bad = coco / "stuffthingmaps" / "val2017" / "000000000001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 30])
    with pytest.raises(PrepareError, match="000000000001.png"):
        coco_stuff.prepare_coco_stuff(str(root), ["val2017"], workers=1)
    assert coco_stuff.main(["--root", str(root), "--splits", "val2017", "--workers", "1"]) == 2
    assert str(bad) in capsys.readouterr().err


def test_registration_never_opens_images(root, prefix):
    coco = root / "coco"
    for split in ("val2017",):
        os.makedirs(coco / split)
        os.makedirs(coco / "stuffthingmaps_detectron2" / split)
        (coco / split / "1.jpg").write_bytes(b"not a jpeg at all")
        (coco / "stuffthingmaps_detectron2" / split / "1.png").write_bytes(b"nor a png")
    register_all_coco_stuff(str(root), prefix=prefix)
    dicts = DatasetCatalog.get(f"{prefix}coco_stuff_sem_seg_val")
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["1.jpg"]
    # an unprepared split fails only when loaded, with a hint
    with pytest.raises(FileNotFoundError, match="prepare_coco_stuff_sem_seg.py"):
        DatasetCatalog.get(f"{prefix}coco_stuff_sem_seg_train")


# ----------------------------------------------------------------------------------- PASCAL Context
PC_IDS = ["2008_000001", "2008_000002", "2008_000003"]


def make_pcontext(root, h=10, w=14):
    pc = root / "VOCdevkit" / "VOC2010"
    # 0 = none, 1 accordion (459 only), 2 aeroplane, 397 table (= PC-59 diningtable),
    # 458 wood, 459 wool (459 only), 104 cup
    values = np.array([0, 1, 2, 397, 458, 459, 104], dtype=np.uint16)
    os.makedirs(pc / "trainval")
    for i, stem in enumerate(PC_IDS):
        write_jpg(str(pc / "JPEGImages" / f"{stem}.jpg"), h, w, seed=i)
        label = values[(np.arange(h * w).reshape(h, w) * (i + 1)) % len(values)]
        scipy.io.savemat(str(pc / "trainval" / f"{stem}.mat"), {"LabelMap": label})
    write_jpg(str(pc / "JPEGImages" / "2008_000099.jpg"), h, w)  # not annotated: not listed
    (pc / "pascalcontext_val.txt").write_text("\n".join(PC_IDS) + "\n")
    names = load_class_names("pcontext459.txt")
    (pc / "labels.txt").write_text(
        "".join(f"{i}: {n.replace(' ', '')}\n" for i, n in enumerate(names, start=1))
    )
    return pc


def test_pcontext_prepare_register_evaluate(root, prefix, tmp_path):
    pc = make_pcontext(root)
    assert pcontext.check_labels_txt(str(pc / "labels.txt")) == []  # spaces ignored
    assert pcontext.main(["--root", str(root), "--workers", "1"]) == 0
    out = pc / "annotations_detectron2"
    pc59 = load_class_names("pcontext59.txt")
    for stem in PC_IDS:
        raw = scipy.io.loadmat(str(pc / "trainval" / f"{stem}.mat"))["LabelMap"].astype(int)
        with Image.open(out / "pc459_val" / f"{stem}.tif") as im:
            assert im.mode == "I;16"
            l459 = np.asarray(im)
        assert l459.dtype == np.uint16
        assert np.array_equal(l459[raw > 0], raw[raw > 0] - 1)  # label value stays (1-based → 0)
        assert (l459[raw == 0] == 65535).all()
        assert (l459[raw == 459] == 458).all() and (l459[raw == 1] == 0).all()
        l59 = read(out / "pc59_sorted_val" / f"{stem}.png")
        assert l59.dtype == np.uint8
        assert (l59[raw == 2] == pc59.index("aeroplane")).all()
        assert (l59[raw == 397] == pc59.index("diningtable")).all()
        assert (l59[raw == 458] == pc59.index("wood")).all()
        assert (l59[raw == 104] == pc59.index("cup")).all()
        for v in (0, 1, 459):
            assert (l59[raw == v] == 255).all()

    register_all_pcontext(str(root), prefix=prefix)
    for key, k, ignore in (("pcontext59", 59, 255), ("pcontext459", 459, 65535)):
        name = f"{prefix}{key}_sem_seg_val"
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == k and meta.ignore_label == ignore
        dicts = DatasetCatalog.get(name)
        assert [os.path.basename(d["file_name"])[:-4] for d in dicts] == PC_IDS
        res = perfect_mIoU(name, tmp_path / key)
        assert res["mIoU"] == pytest.approx(100.0)


def test_pcontext_damaged_inputs(root):
    pc = make_pcontext(root)
    bad = pc / "trainval" / f"{PC_IDS[1]}.mat"
    scipy.io.savemat(str(bad), {"SomethingElse": np.zeros((2, 2), np.uint16)})
    with pytest.raises(PrepareError, match=rf"LabelMap.*{PC_IDS[1]}\.mat"):
        pcontext.prepare_pcontext(str(root), workers=1)
    bad.write_bytes(b"MATLAB 5.0 MAT-file truncated")
    with pytest.raises(PrepareError, match=rf"{PC_IDS[1]}\.mat"):
        pcontext.prepare_pcontext(str(root), workers=1)
    os.remove(bad)
    with pytest.raises(PrepareError, match=rf"Missing.*{PC_IDS[1]}\.mat"):
        pcontext.prepare_pcontext(str(root), workers=1)


# ----------------------------------------------------------------------------------- ADE20K-150
def test_ade150_prepare_register_evaluate(root, prefix, tmp_path):
    ade = root / "ADEChallengeData2016"
    for i in range(2):
        stem = f"ADE_val_{i + 1:08d}"
        write_jpg(str(ade / "images" / "validation" / f"{stem}.jpg"), 9, 11, seed=i)
        raw = ((np.arange(99).reshape(9, 11) * 7 + i) % 151).astype(np.uint8)
        write_png(str(ade / "annotations" / "validation" / f"{stem}.png"), raw)
    assert ade20k.main_150(["--root", str(root), "--splits", "validation", "--workers", "1"]) == 0
    for f in os.listdir(ade / "annotations" / "validation"):
        raw = read(ade / "annotations" / "validation" / f)
        out = read(ade / "annotations_detectron2" / "validation" / f)
        assert (out[raw == 0] == 255).all()
        assert np.array_equal(out[raw > 0], raw[raw > 0] - 1)
        assert (out[raw == 150] == 149).all()

    # the builtin names are reused; only stuff_colors is added
    builtin = MetadataCatalog.get("ade20k_sem_seg_val")
    assert list(builtin.stuff_classes) == list(ADE20K_SEM_SEG_CATEGORIES)
    assert len(builtin.stuff_colors) == 150

    register_all_ade20k(str(root), prefix=prefix)
    name = f"{prefix}ade20k_sem_seg_val"
    assert MetadataCatalog.get(name).ignore_label == 255
    assert len(DatasetCatalog.get(name)) == 2
    assert perfect_mIoU(name, tmp_path / "eval")["mIoU"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------------- ADE20K-847
def encode_ade_seg(ids, rng):
    """ADE20K *_seg.png: R = (id // 256) * 10 + noise(0..9), G = id % 256, B = instance."""
    r = (ids // 256) * 10 + rng.integers(0, 10, ids.shape)
    g = ids % 256
    b = rng.integers(0, 255, ids.shape)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def make_ade_full(root):
    base = root / "ADE20K_2021_17_01"
    ade_ids = load_class_ids("ade847_ids.txt")
    unused = next(i for i in range(1, 4000) if i not in set(ade_ids))
    # (id, expected trainId)
    palette = [(2978, 0), (312, 1), (3148, 846), (unused, 65535), (0, 65535), (ade_ids[500], 500)]
    items = [
        ("validation/home/kitchen", "ADE_val_00000001.jpg", 10, 13),
        ("validation/home/kitchen", "ADE_val_00000002.jpg", 600, 900),  # resized to 512 x 768
        ("training/urban/street", "ADE_train_00000001.jpg", 12, 8),
    ]
    rng = np.random.default_rng(0)
    folders, filenames, expected = [], [], {}
    for k, (sub, fname, h, w) in enumerate(items):
        folder = f"ADE20K_2021_17_01/images/ADE/{sub}"
        yy, xx = np.mgrid[0:h, 0:w]
        idx = ((yy * 3) // max(1, h // 4) + (xx * 2) // max(1, w // 5) + k) % len(palette)
        ids = np.array([p[0] for p in palette])[idx]
        train_ids = np.array([p[1] for p in palette], dtype=np.uint16)[idx]
        write_jpg(str(root / folder / fname), h, w, seed=k)
        write_png(str(root / folder / fname.replace(".jpg", "_seg.png")), encode_ade_seg(ids, rng))
        folders.append(folder)
        filenames.append(fname)
        expected[fname] = train_ids
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": folders, "filename": filenames, "objectnames": ["x"]}, f)
    return base, expected


def test_ade847_prepare_register_evaluate(root, prefix, tmp_path):
    base, expected = make_ade_full(root)
    assert ade20k.main_full(["--root", str(root), "--workers", "1"]) == 0
    for fname, exp in expected.items():
        split = "validation" if "_val_" in fname else "training"
        stem = fname[:-4]
        with Image.open(base / "annotations_detectron2" / split / f"{stem}.tif") as im:
            assert im.mode == "I;16"
            lab = np.asarray(im)
        img = read(base / "images_detectron2" / split / f"{stem}.jpg")
        h, w = exp.shape
        if min(h, w) > 512:
            assert lab.shape == (512, 768) and img.shape == (512, 768, 3)
            exp = cv2.resize(exp, (768, 512), interpolation=cv2.INTER_NEAREST)
        else:
            assert lab.shape == (h, w) and img.shape == (h, w, 3)
        assert np.array_equal(lab, exp)
    assert set(np.unique(expected["ADE_val_00000001.jpg"])) >= {0, 1, 846, 65535}

    register_all_ade20k(str(root), prefix=prefix)
    name = f"{prefix}ade847_sem_seg_val"
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == 847 and meta.ignore_label == 65535
    assert meta.stuff_dataset_id_to_contiguous_id[3148] == 846
    assert len(DatasetCatalog.get(name)) == 2
    assert len(DatasetCatalog.get(f"{prefix}ade847_sem_seg_train")) == 1
    # the 512 x 768 image would need a 847 x 512 x 768 score tensor: score the small one only
    res = perfect_mIoU(name, tmp_path / "eval", skip={"ADE_val_00000002.jpg"})
    assert res["mIoU"] == pytest.approx(100.0)

    # re-run: everything skipped; a deleted image is redone together with its label
    os.remove(base / "images_detectron2" / "validation" / "ADE_val_00000001.jpg")
    summary = ade20k.prepare_ade20k_full(str(root), workers=1)
    assert summary["validation"] == {"written": 1, "skipped": 1}
    assert summary["training"] == {"written": 0, "skipped": 1}


def test_ade847_damaged_seg_names_file(root):
    base, _ = make_ade_full(root)
    seg = root / "ADE20K_2021_17_01/images/ADE/training/urban/street/ADE_train_00000001_seg.png"
    data = seg.read_bytes()
    seg.write_bytes(data[:40])
    with pytest.raises(PrepareError, match="ADE_train_00000001_seg.png"):
        ade20k.prepare_ade20k_full(str(root), splits=["training"], workers=1)


# ----------------------------------------------------------------------------------- VOC train-aug
def test_voc_trainaug_prepare_register(root, prefix, tmp_path):
    voc = root / "VOCdevkit" / "VOC2012"
    stems = ["2007_000032", "2008_000002", "2011_003276", "2007_000033"]
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    for i, s in enumerate(stems):
        write_jpg(str(voc / "JPEGImages" / f"{s}.jpg"), 8, 10, seed=i)
        raw = np.array([0, 1, 15, 20, 255], np.uint8)[(np.arange(80).reshape(8, 10) + i) % 5]
        write_png(str(voc / "SegmentationClassAug" / f"{s}.png"), raw)
    assert voc_aug.main(["--root", str(root), "--workers", "1"]) == 0
    ids = (voc / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()
    assert ids == sorted(stems[:3])
    for s in ids:
        raw = read(voc / "SegmentationClassAug" / f"{s}.png")
        out = read(voc / "annotations_detectron2" / "trainaug" / f"{s}.png")
        assert (out[raw == 0] == 255).all() and (out[raw == 255] == 255).all()
        assert (out[raw == 1] == 0).all() and (out[raw == 20] == 19).all()
    assert not (voc / "annotations_detectron2" / "trainaug" / "2007_000033.png").exists()

    register_all_voc_aug(str(root), prefix=prefix)
    m20 = MetadataCatalog.get(f"{prefix}voc20_sem_seg_trainaug")
    m21 = MetadataCatalog.get(f"{prefix}voc21_sem_seg_trainaug")
    assert len(m20.stuff_classes) == 20 and m21.stuff_classes[0] == "background"
    for key in ("voc20", "voc21"):
        name = f"{prefix}{key}_sem_seg_trainaug"
        assert len(DatasetCatalog.get(name)) == 3
        assert perfect_mIoU(name, tmp_path / key)["mIoU"] == pytest.approx(100.0)

    # a given list that overlaps val is refused
    (voc / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("2007_000033\n")
    with pytest.raises(PrepareError, match="val.txt"):
        voc_aug.prepare_voc_aug(str(root), workers=1)
