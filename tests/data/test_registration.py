"""VOC / toy registration: names, metadata, lazy loading and clear errors."""
import os

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from clipdistill.data.datasets import common
from clipdistill.data.datasets.register_voc import register_voc
from clipdistill.data.voc20_toy import generate_toy_voc
from clipdistill.utils.colors import deterministic_colors


@pytest.fixture
def temp_names():
    names = []
    yield names
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_builtin_names_do_not_collide_with_detectron2():
    registered = DatasetCatalog.list()
    for name in ("voc20_sem_seg_train", "voc20_sem_seg_val", "voc21_sem_seg_val",
                 "voc20_toy_sem_seg_train", "voc20_toy_sem_seg_val"):
        assert name in registered
        assert MetadataCatalog.get(name).evaluator_type == "sem_seg"
    # the zero-shot protocol of SPNet / ZegFormer / ZegCLIP on the same VOC-20 files
    zs = MetadataCatalog.get("voc20_zs_sem_seg_val")
    assert zs.evaluator_type == "sem_seg_zero_shot"
    assert zs.unseen_classes == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert sorted(zs.seen_classes + zs.unseen_classes) == sorted(zs.stuff_classes)
    # detectron2's own VOC *detection* datasets are untouched
    assert MetadataCatalog.get("voc_2012_train").evaluator_type == "pascal_voc"
    m20, m21 = MetadataCatalog.get("voc20_sem_seg_val"), MetadataCatalog.get("voc21_sem_seg_val")
    assert len(m20.stuff_classes) == 20 and m20.ignore_label == 255
    assert m21.stuff_classes[0] == "background" and m21.stuff_classes[1:] == m20.stuff_classes
    assert len(m20.stuff_colors) == 20 and m20.stuff_colors == deterministic_colors(20)


def test_missing_dataset_folder_names_path_and_fix(tmp_path, temp_names):
    register_voc("tmpreg_missing", str(tmp_path / "nowhere" / "VOC2012"), "Run make_toy.")
    temp_names += ["tmpreg_missing_sem_seg_train", "tmpreg_missing_sem_seg_val"]
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("tmpreg_missing_sem_seg_val")
    msg = str(e.value)
    assert "tmpreg_missing_sem_seg_val" in msg and str(tmp_path / "nowhere") in msg
    assert "Run make_toy." in msg and "DETECTRON2_DATASETS" in msg


def test_toy_dataset_loads_and_listed_files_exist(tmp_path, temp_names):
    voc = str(tmp_path / "VOC2012")
    generate_toy_voc(voc, num_train=3, num_val=2, size=48)
    register_voc("tmpreg_toy", voc, "")
    temp_names += ["tmpreg_toy_sem_seg_train", "tmpreg_toy_sem_seg_val"]
    dicts = DatasetCatalog.get("tmpreg_toy_sem_seg_train")
    assert len(dicts) == 3
    assert all(os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
               for d in dicts)
    # a listed label that disappeared is named
    os.remove(dicts[0]["sem_seg_file_name"])
    with pytest.raises(FileNotFoundError, match=os.path.basename(dicts[0]["sem_seg_file_name"])):
        DatasetCatalog.get("tmpreg_toy_sem_seg_train")


def test_toy_generation_is_deterministic_and_resumable(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    generate_toy_voc(a, num_train=4, num_val=2, size=48, seed=3)
    generate_toy_voc(b, num_train=4, num_val=2, size=48, seed=3)
    rel = os.path.join("annotations_detectron2", "train", "toy_train_0002.png")
    assert open(os.path.join(a, rel), "rb").read() == open(os.path.join(b, rel), "rb").read()
    # interrupted run: a file missing and a stale temp left behind -> re-run completes it
    os.remove(os.path.join(a, rel))
    os.remove(os.path.join(a, "JPEGImages", "toy_val_0001.jpg"))
    generate_toy_voc(a, num_train=4, num_val=2, size=48, seed=3)
    assert open(os.path.join(a, rel), "rb").read() == open(os.path.join(b, rel), "rb").read()
    assert os.path.isfile(os.path.join(a, "JPEGImages", "toy_val_0001.jpg"))


def test_duplicated_class_names_file_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n")
    monkeypatch.setattr(common, "_CLASS_NAMES_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"dup\.txt.*cat"):
        common.load_class_names("dup.txt")
