"""The generated captioned world: vocabulary and split, deterministic vectorised rendering, labels
that match the captions and the drawn colours and patterns, and its registration."""

import hashlib
import json
import os
import re

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from clipdistill.data.datasets.register_testbed import register_testbed
from clipdistill.data.synthetic import (
    COLOURS,
    DEFAULT_WORLD,
    PATTERNS,
    Scenes,
    World,
    caption_of,
    render_scenes,
    sample_scenes,
)
from clipdistill.data.synthetic.render import pattern_masks
from clipdistill.data.synthetic.writer import generate_testbed
from clipdistill.utils.errors import DataError
from PIL import Image


def test_world_vocabulary_and_split():
    w = DEFAULT_WORLD
    names = w.class_names
    assert len(names) == 37 and names[0] == "empty background" and len(set(names)) == 37
    assert names[w.class_id(3, 4)] == f"{w.colours[3]} {w.patterns[4]} patch" == "green zigzag patch"
    assert w.colour_pattern(w.class_id(5, 2)) == (5, 2)
    unseen = w.unseen_classes
    assert len(unseen) == 6 and set(unseen).isdisjoint(w.seen_classes)
    assert sorted(unseen + w.seen_classes) == sorted(names) and names[0] in w.seen_classes
    # one unseen class per colour and per pattern: every unseen word is seen in other classes
    assert sorted(n.split()[0] for n in unseen) == sorted(w.colours)
    assert sorted(n.split()[1] for n in unseen) == sorted(w.patterns)
    assert [names[i] for i in w.unseen_ids] == unseen
    with pytest.raises(ValueError, match="unknown colours/patterns/silhouettes"):
        World(colours=("red", "mauve"))
    with pytest.raises(ValueError, match="distinct"):
        World(patterns=("plain", "plain"))


def test_caption_grammar():
    assert caption_of([]) == "an empty background."
    assert caption_of(["red striped patch"]) == "a red striped patch."
    assert (
        caption_of(["orange dotted patch", "blue plain patch"])
        == "an orange dotted patch and a blue plain patch."
    )
    assert caption_of(["a", "b", "c"]) == "an a, a b and a c."


def _parse(caption):
    body = caption.rstrip(".")
    parts = re.split(r", | and ", body)
    return sorted(p.split(" ", 1)[1] for p in parts)


def _dark_fraction(pixels: np.ndarray) -> float:
    """Fraction of an object's pixels drawn in the dark tone (brightness below the midpoint of
    the object's two tones)."""
    lum = pixels.astype(float).sum(1)
    hi = np.percentile(lum, 95)
    return float((lum < 0.7 * hi).mean())


def test_rendered_labels_match_captions_and_colours():
    rng = np.random.default_rng(7)
    scenes = sample_scenes(rng, 300, DEFAULT_WORLD)
    images, labels = render_scenes(rng, scenes, 64)
    assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (300, 64, 64)
    assert set(scenes.count) == {0, 1, 2, 3}
    names = DEFAULT_WORLD.class_names
    for i, caption in enumerate(scenes.captions()):
        present = [int(v) for v in np.unique(labels[i]) if v != 0]
        if not present:
            assert caption == "an empty background."
            continue
        # every named object is drawn, nothing else is
        assert sorted(names[v] for v in present) == _parse(caption), caption
        for v in present:
            mask = labels[i] == v
            assert mask.sum() >= 40, (caption, names[v], mask.sum())
            # the pixels labelled "red ..." are red: the chromaticity (brightness varies per
            # object) of their mean is nearest to the named colour's
            colour = names[v].split()[0]
            mean = images[i][mask].astype(float).mean(0)
            chroma = {c: np.array(COLOURS[c], float) for c in DEFAULT_WORLD.colours}
            nearest = max(chroma, key=lambda c: chroma[c] @ mean / np.linalg.norm(chroma[c]))
            assert nearest == colour, (caption, names[v], mean)
            # a plain patch is one tone; every other pattern draws a dark tone on a good part
            dark = _dark_fraction(images[i][mask])
            if names[v].split()[1] == "plain":
                assert dark < 0.05, (caption, names[v], dark)
            else:
                assert 0.12 < dark < 0.75, (caption, names[v], dark)


def test_pattern_masks_are_periodic_and_distinct():
    """Each pattern's dark tone covers its share of the plane, with the given period, and no two
    patterns draw the same mask."""
    yy, xx = np.mgrid[0:60, 0:60].astype(np.float32)
    masks = {}
    for p, name in enumerate(PATTERNS):
        m = pattern_masks(xx, yy, np.full(xx.shape, p), 6.0)
        masks[name] = m
        assert (m == pattern_masks(xx + 6.0, yy, np.full(xx.shape, p), 6.0)).mean() > 0.97, name
    share = {k: float(m.mean()) for k, m in masks.items()}
    assert share["plain"] == 0.0 and 0.2 < share["dotted"] < 0.4
    assert all(0.4 < share[k] < 0.6 for k in ("striped", "checked", "zigzag")), share
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (masks[a] != masks[b]).mean() > 0.15, (a, b)


def test_pattern_only_captions_and_explicit_scenes():
    w = DEFAULT_WORLD
    ids = np.array([[w.class_id(0, 3), w.class_id(4, 4)], [0, 0]])
    scenes = Scenes(world=w, class_ids=ids)
    assert scenes.captions() == [
        "a red checked patch and a blue zigzag patch.",
        "an empty background.",
    ]
    assert scenes.pattern_captions() == [
        "a checked patch and a zigzag patch.",
        "an empty background.",
    ]
    _, labels = render_scenes(np.random.default_rng(0), scenes, 48)
    assert set(np.unique(labels[0])) == {0, int(ids[0, 0]), int(ids[0, 1])}
    assert (labels[1] == 0).all()


def _digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_generation_is_deterministic_and_resumable(tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    generate_testbed(a, num_train=12, num_val=6, size=48, seed=3)
    generate_testbed(b, num_train=12, num_val=6, size=48, seed=3)
    generate_testbed(c, num_train=12, num_val=6, size=48, seed=4)
    da, db = _digest(a), _digest(b)
    assert da == db and len(da) == 2 * 18 + 2 + 1  # images, labels, captions, testbed.json
    assert _digest(c) != da
    # the same folder with other arguments: an error naming the difference, nothing overwritten
    with pytest.raises(DataError, match=r"'seed': \(3, 5\)"):
        generate_testbed(a, num_train=12, num_val=6, size=48, seed=5)
    assert _digest(a) == db
    # interrupted run: files missing -> re-running completes them identically
    os.remove(os.path.join(a, "annotations_detectron2", "train", "train_000005.png"))
    os.remove(os.path.join(a, "images", "val", "val_000002.png"))
    generate_testbed(a, num_train=12, num_val=6, size=48, seed=3)
    assert _digest(a) == db


@pytest.fixture
def registered(tmp_path):
    root = str(tmp_path / "tb")
    names = ["tmptb_sem_seg_train", "tmptb_sem_seg_val"]
    register_testbed("tmptb", root, hint="Run the generator.")
    yield root
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_registration_records_metadata_and_errors(registered):
    root = registered
    with pytest.raises(FileNotFoundError, match=r"tmptb_sem_seg_val.*captions.*\n.*generator"):
        DatasetCatalog.get("tmptb_sem_seg_val")
    generate_testbed(root, num_train=4, num_val=5, size=48, seed=1)
    dicts = DatasetCatalog.get("tmptb_sem_seg_val")
    assert len(dicts) == 5
    captions = json.load(open(os.path.join(root, "captions", "val.json")))["images"]
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        assert d["caption"] == captions[stem]["caption"]
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        names = [DEFAULT_WORLD.class_names[v] for v in np.unique(label) if v]
        assert sorted(names) == sorted(captions[stem]["objects"])
    meta = MetadataCatalog.get("tmptb_sem_seg_val")
    assert meta.stuff_classes == DEFAULT_WORLD.class_names
    assert meta.unseen_classes == DEFAULT_WORLD.unseen_classes
    assert meta.seen_classes == DEFAULT_WORLD.seen_classes
    assert meta.evaluator_type == "sem_seg_zero_shot" and meta.ignore_label == 255


def test_registration_rejects_another_world(registered):
    generate_testbed(registered, num_train=2, num_val=2, size=48, world=World(unseen_shift=2))
    DatasetCatalog.get("tmptb_sem_seg_val")  # same classes, other split: the files still fit
    generate_testbed(
        registered + "2", num_train=2, num_val=2, size=48, world=World(colours=("red", "pink"))
    )
    os.replace(
        os.path.join(registered + "2", "captions", "val.json"),
        os.path.join(registered, "captions", "val.json"),
    )
    with pytest.raises(ValueError, match="generated for the classes"):
        DatasetCatalog.get("tmptb_sem_seg_val")


def test_builtin_zero_shot_protocols():
    w = DEFAULT_WORLD
    tb = MetadataCatalog.get("testbed_sem_seg_train")
    assert tb.unseen_classes == w.unseen_classes and tb.evaluator_type == "sem_seg_zero_shot"
    voc = MetadataCatalog.get("voc20_zs_sem_seg_val")
    assert voc.unseen_classes == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert (
        len(voc.seen_classes) == 15
        and voc.stuff_classes == MetadataCatalog.get("voc20_sem_seg_val").stuff_classes
    )
    coco = MetadataCatalog.get("coco_stuff_zs_sem_seg_train")
    assert len(coco.seen_classes) == 156 and len(coco.unseen_classes) == 15
    assert {"cow", "giraffe", "frisbee", "grass", "tree", "wall-concrete"} <= set(
        coco.unseen_classes
    )
    assert MetadataCatalog.get("coco_stuff_sem_seg_val").evaluator_type == "sem_seg"


def test_a_truncated_captions_file_is_named(tmp_path):
    from clipdistill.data.datasets.register_testbed import load_testbed_split
    from clipdistill.data.synthetic import DEFAULT_WORLD
    from clipdistill.utils.errors import DataError

    path = tmp_path / "captions" / "val.json"
    path.parent.mkdir()
    path.write_text('{"class_names": ["empty backgr')
    with pytest.raises(DataError, match=r"captions/val\.json is damaged"):
        load_testbed_split("testbed_sem_seg_val", str(tmp_path), "val", DEFAULT_WORLD)
