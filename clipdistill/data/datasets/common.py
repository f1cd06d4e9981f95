"""Helpers shared by every ``register_*.py``: dataset root, class-name files, loading.

Registration never opens an image: loaders only list files (detectron2's rule), and they run
lazily when ``DatasetCatalog.get(name)`` is called, which is where a missing folder is reported.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.colors import deterministic_colors
from ...utils.errors import DataError

__all__ = [
    "datasets_root",
    "load_class_names",
    "load_class_ids",
    "list_sem_seg_files",
    "register_sem_seg",
    "training_class_names",
    "ZERO_SHOT_EVALUATOR_TYPE",
]

#: ``evaluator_type`` of datasets with a seen/unseen split (``clipdistill.evaluation``).
ZERO_SHOT_EVALUATOR_TYPE = "sem_seg_zero_shot"

_CLASS_NAMES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "class_names")


def datasets_root() -> str:
    """The datasets root: ``$DETECTRON2_DATASETS`` (default ``datasets``), user-expanded."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def load_class_names(filename: str) -> List[str]:
    """Read a class-name list shipped with the package (one name per line, in label order).

    Args:
        filename (str): a file name inside ``clipdistill/data/datasets/class_names/``; resolved
            relative to the package, never to the working directory.
    Returns:
        list[str]: the names, in label order.
    """
    path = os.path.join(_CLASS_NAMES_DIR, filename)
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f if line.strip()]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"Duplicated class names in {path}: {dup}")
    return names


def load_class_ids(filename: str) -> List[int]:
    """Read an integer list shipped with the package (one id per line, in label order).

    Used next to a class-name file when a dataset's own ids are not its label values, e.g.
    ``coco_stuff171_ids.txt`` (1-based COCO ids), ``ade847_ids.txt`` (ADE20K object ids) and
    ``pcontext59_ids.txt`` (1-based PASCAL Context 459-ids of the 59 classes).

    Args:
        filename (str): a file name inside ``clipdistill/data/datasets/class_names/``.
    Returns:
        list[int]: the ids; line ``i`` belongs to label ``i``.
    """
    path = os.path.join(_CLASS_NAMES_DIR, filename)
    with open(path, encoding="utf-8") as f:
        ids = [int(line) for line in f if line.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Duplicated ids in {path}")
    return ids


def list_sem_seg_files(
    dataset_name: str,
    image_root: str,
    gt_root: str,
    *,
    ids: Optional[Sequence[str]] = None,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    prepare_hint: str = "",
) -> List[Dict]:
    """Build ``[{"file_name", "sem_seg_file_name"}]`` records without opening any file.

    Args:
        dataset_name (str): registered name, used in error messages.
        image_root, gt_root (str): folders of images and of label maps.
        ids (list[str] or None): file stems in dataset order; ``None`` means every label file in
            ``gt_root`` (sorted), each of which must have an image.
        image_ext, gt_ext (str): file extensions without the dot.
        prepare_hint (str): how to create the missing folders, appended to the error.
    Returns:
        list[dict]: detectron2 dataset dicts.
    """
    hint = f"\n{prepare_hint}" if prepare_hint else ""
    for kind, folder in (("images", image_root), ("labels", gt_root)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"Dataset '{dataset_name}': the {kind} folder {folder} does not exist "
                f"(datasets root: $DETECTRON2_DATASETS={datasets_root()}).{hint}"
            )
    if ids is not None and not len(ids):
        raise DataError(f"Dataset '{dataset_name}': its list of image ids is empty.{hint}")
    if ids is None:
        suffix = "." + gt_ext
        ids = sorted(f[: -len(suffix)] for f in os.listdir(gt_root) if f.endswith(suffix))
    records = []
    missing = []
    for stem in ids:
        image = os.path.join(image_root, f"{stem}.{image_ext}")
        label = os.path.join(gt_root, f"{stem}.{gt_ext}")
        if not os.path.isfile(label) or not os.path.isfile(image):
            missing.append(label if not os.path.isfile(label) else image)
            continue
        records.append({"file_name": image, "sem_seg_file_name": label})
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileNotFoundError(
            f"Dataset '{dataset_name}': {len(missing)} of {len(ids)} listed files are missing: "
            f"{shown}.{hint}"
        )
    if not records:
        raise FileNotFoundError(f"Dataset '{dataset_name}': no label files in {gt_root}.{hint}")
    return records


def register_sem_seg(
    name: str,
    loader: Callable[[], List[Dict]],
    *,
    stuff_classes: Sequence[str],
    image_root: str,
    sem_seg_root: str,
    ignore_label: int = 255,
    stuff_dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None,
    unseen_classes: Optional[Sequence[str]] = None,
    **extra_metadata,
) -> None:
    """Register one semantic-segmentation dataset in DatasetCatalog/MetadataCatalog.

    Sets ``stuff_classes``, deterministic ``stuff_colors``, ``ignore_label``,
    ``evaluator_type="sem_seg"``, roots, and the id mapping only when ids are not contiguous.

    With ``unseen_classes`` (the zero-shot protocol of ZS3Net/SPNet/ZegFormer/ZegCLIP), the
    metadata also holds ``seen_classes`` (the others, in label order) and ``unseen_classes``, and
    ``evaluator_type`` is ``"sem_seg_zero_shot"`` (seen / unseen mIoU and hIoU). In training the
    mapper sets the pixels of unseen classes to the ignore value and the model's training
    vocabulary is ``seen_classes`` (``training_class_names``); evaluation scores every class.
    """
    meta = dict(
        stuff_classes=list(stuff_classes),
        stuff_colors=deterministic_colors(len(stuff_classes)),
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        **extra_metadata,
    )
    if unseen_classes is not None:
        unseen = list(unseen_classes)
        unknown = [c for c in unseen if c not in meta["stuff_classes"]]
        if unknown or not unseen or len(set(unseen)) != len(unseen):
            raise ValueError(
                f"Dataset '{name}': unseen_classes must be distinct names of its "
                f"stuff_classes; not classes: {unknown}, given: {unseen}"
            )
        meta["unseen_classes"] = [c for c in meta["stuff_classes"] if c in set(unseen)]
        meta["seen_classes"] = [c for c in meta["stuff_classes"] if c not in set(unseen)]
        meta["evaluator_type"] = ZERO_SHOT_EVALUATOR_TYPE
    if stuff_dataset_id_to_contiguous_id is not None:
        meta["stuff_dataset_id_to_contiguous_id"] = dict(stuff_dataset_id_to_contiguous_id)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**meta)


def training_class_names(metadata) -> List[str]:
    """The classes a model is trained on with a dataset: ``seen_classes`` when the dataset has a
    seen/unseen split, else ``stuff_classes`` (``[]`` when it has neither)."""
    seen = metadata.get("seen_classes", None)
    if seen is not None:
        return list(seen)
    return list(metadata.get("stuff_classes", None) or [])
