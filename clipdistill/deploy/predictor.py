"""``SegPredictor``: a trained student behind a simple image-in, label-map-out interface.

Like detectron2's ``DefaultPredictor`` but for open-vocabulary semantic segmentation: it builds the
model from the config, loads ``MODEL.WEIGHTS`` strictly (``SegmenterCheckpointer``: a checkpoint
that does not match the config raises ``CheckpointMismatchError``), resizes images like the
test-time mapper (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``), runs batches, and returns
label maps (and optionally per-class score maps) at each image's original size.

The vocabulary is any list of class names. Their text embeddings come from the teacher's text
encoder once per vocabulary (cached in memory and on disk by ``CLIPTeacher.encode_text``), so the
image side runs the student only.
"""

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..data.dataset_mappers import build_sem_seg_augmentation
from ..engine import SegmenterCheckpointer, build_model
from ..modeling.batch_norm import fold_for_inference
from ..modeling.clip.text import check_class_names
from ..modeling.postprocess import (
    CHUNK_ELEMENTS,
    LABEL_CANDIDATES,
    CoarseSemSeg,
    iter_probs,
    label_map,
)
from ..modeling.segmenter import OpenVocabSegmenter
from ..utils.errors import ConfigError, DataError
from ..utils.visualize import class_colors, overlay_with_legend

__all__ = [
    "SegPredictor",
    "SegResult",
    "ScoreMaps",
    "parse_class_names",
    "read_image_rgb",
    "evaluation_vocabulary",
]

logger = logging.getLogger(__name__)


def evaluation_vocabulary(cfg) -> Optional[List[str]]:
    """The class names a config is evaluated on (``DATASETS.TEST[0]``'s, seen and unseen), or
    None when it names no test set with classes: the demos' default vocabulary."""
    test = cfg.DATASETS.TEST
    names = MetadataCatalog.get(test[0]).get("stuff_classes", None) if test else None
    return list(names) if names else None


def example_images(cfg, count: int = 4) -> List[str]:
    """The first ``count`` images of the config's test set (``DATASETS.TEST[0]``) that exist on
    disk: the web demo's examples to click. Empty when the config names no test set, or its data
    is not there (a real dataset not yet prepared): the demo then opens without examples."""
    import os

    from detectron2.data import DatasetCatalog

    test = cfg.DATASETS.TEST
    if count <= 0 or not test or test[0] not in DatasetCatalog.list():
        return []
    try:
        records = DatasetCatalog.get(test[0])
    except Exception as e:  # a dataset not prepared: no examples, said once
        logger.info(f"no example images: {test[0]} cannot be read ({type(e).__name__}: {e})")
        return []
    paths = [r["file_name"] for r in records if os.path.isfile(r.get("file_name", ""))]
    return paths[:count]


def parse_class_names(text: str) -> List[str]:
    """Comma-separated names (the web demo's text box) -> checked list (``check_class_names``)."""
    if text is None or not str(text).strip():
        raise ConfigError(
            "no class names given: type comma-separated names, e.g. 'cat, dog, grass'"
        )
    return check_class_names(str(text).split(","))


def read_image_rgb(path: str) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]`` (EXIF orientation applied; 16-bit images
    scaled to 8 bits, see ``to_rgb_uint8``).

    Raises:
        OSError: the file is missing or is not a readable image (the message names the file).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                image = np.asarray(im)  # 16/32-bit greyscale: scaled below, not clamped
            else:
                image = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise OSError(f"{path}: no such file") from e
    except Exception as e:  # PIL raises several types for damaged or non-image files
        raise OSError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return to_rgb_uint8(image, path)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale any numeric image to uint8: floats in [0, 1] x 255 (else clipped to 0..255);
    uint16 (and integers above 255) / 257, so that 65535 -> 255 (16-bit PNG/TIFF)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if image.size and image.max() <= 1.0:
            image = image * 255.0
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        hi = int(image.max()) if image.size else 0
        if image.dtype == np.uint16 or 255 < hi <= 65535:
            scaled = image.astype(np.float32) / 257.0
        elif hi > 65535:  # 32-bit data: stretch to its own range
            scaled = image.astype(np.float32) * (255.0 / hi)
        else:
            scaled = image.astype(np.float32)
        return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Greyscale / RGBA / RGB array of any numeric dtype -> contiguous uint8 RGB ``[H, W, 3]``
    (``_to_uint8``: a 16-bit image is scaled, not clamped to white)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(
            f"{name}: expected an image [H, W, 3], got an array of shape {image.shape}"
        )
    if image.shape[2] == 4:
        image = image[:, :, :3]
    image = _to_uint8(image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


class ScoreMaps:
    """Per-class probabilities ``[K, H, W]`` (softmax over the vocabulary) of one image, produced
    class chunk by class chunk (``clipdistill.modeling.postprocess.iter_probs``), so that
    writing them needs memory for a chunk, not for ``K x H x W``.

    ``chunks()`` yields ``(k0, float32 [k, H, W])``; ``numpy()`` builds the whole array.
    """

    def __init__(self, coarse: CoarseSemSeg, budget: int = CHUNK_ELEMENTS):
        self._coarse = coarse
        self._budget = budget

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self._coarse.num_classes,) + self._coarse.output_size

    def chunks(self) -> Iterator[Tuple[int, np.ndarray]]:
        for k0, probs in iter_probs(self._coarse, self._budget):
            yield k0, probs.cpu().numpy()

    def numpy(self, dtype=np.float32) -> np.ndarray:
        out = np.empty(self.shape, dtype)
        for k0, part in self.chunks():
            out[k0 : k0 + len(part)] = part
        return out


@dataclass
class SegResult:
    """One image's result.

    Attributes:
        label: int32 ``[H, W]``, indices into ``class_names``, at the image's original size.
        scores: the per-class probabilities (``ScoreMaps``, ``K x H x W``, computed on demand
            in class chunks; the segmenter's ``scores_to_probs``, a softmax of a student's
            logits), or None when not requested.
        class_names: the vocabulary (``K`` names).
    """

    label: np.ndarray
    scores: Optional[ScoreMaps]
    class_names: List[str]


class SegPredictor:
    """Build the student from ``cfg``, load ``cfg.MODEL.WEIGHTS`` strictly, and segment images.

    Example::

        cfg = get_clipdistill_cfg("configs/voc.yaml", ["MODEL.WEIGHTS", "out/model_final.pth"])
        predictor = SegPredictor(cfg, class_names=["cat", "potted plant"])
        result = predictor(read_image_rgb("img.jpg"))       # SegResult
        results = predictor.predict([img1, img2], scores=True)

    Args:
        cfg: a clipdistill config (``get_clipdistill_cfg``); not modified.
        class_names: the vocabulary; None uses the training vocabulary (the ``stuff_classes`` of
            ``DATASETS.TRAIN[0]``).
        require_weights: raise if ``MODEL.WEIGHTS`` is empty (else a random student is used, with
            a warning).

    Raises:
        FileNotFoundError: ``MODEL.WEIGHTS`` does not exist.
        CheckpointMismatchError: the checkpoint does not match the model built from ``cfg``.
        ValueError: bad vocabulary (empty, empty names, duplicates; or another vocabulary than the
            training one with a closed-set head).
    """

    #: elements (classes x H x W) of one class chunk of the label and score maps: the memory
    #: bound of the post-processing, whatever the vocabulary (``modeling.postprocess``)
    chunk_elements: int = CHUNK_ELEMENTS
    #: the label map resamples only each pixel's candidate classes, the top ``label_candidates``
    #: of the low-resolution cells it reads (``modeling.postprocess.resample_labels``; a
    #: segmenter whose ``coarse_sem_seg`` has no resampling tables, or 0: every class)
    label_candidates: int = LABEL_CANDIDATES
    #: recompute with every class the pixels whose best candidate is not certified to win
    #: (``resample_labels(exact=True)``): labels always those of the full computation
    exact_labels: bool = False

    def __init__(self, cfg, class_names: Optional[Sequence[str]] = None, require_weights=False):
        if class_names is not None:  # a bad vocabulary fails before the model is built
            check_class_names(class_names)
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        if not isinstance(self.model, OpenVocabSegmenter):
            raise TypeError(
                f"MODEL.META_ARCHITECTURE={self.cfg.MODEL.META_ARCHITECTURE!r} is not a "
                "clipdistill segmenter (OpenVocabSegmenter)"
            )
        self.model.eval()
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            SegmenterCheckpointer(self.model).load(weights)
        elif require_weights:
            raise ConfigError("MODEL.WEIGHTS is empty: pass a trained checkpoint")
        else:
            logger.warning(
                f"MODEL.WEIGHTS is empty: the {type(self.model).__name__} keeps the weights its "
                "config builds (what a training-free segmenter needs; random for a trained one)"
            )
        # the evaluation mapper's geometry, so the demo sees what the evaluator saw
        self.augs = T.AugmentationList(build_sem_seg_augmentation(self.cfg, is_train=False))
        self.input_format = self.cfg.INPUT.FORMAT
        train = self.cfg.DATASETS.TRAIN
        self.train_metadata = MetadataCatalog.get(train[0]) if train else None
        self.class_names: List[str] = []
        self.colors = np.zeros((0, 3), np.uint8)
        self.set_class_names(class_names)
        if self.cfg.MODEL.CLIPDISTILL.FOLD_BN:  # checked against the unfolded model
            fold_for_inference(self.model)

    # ------------------------------------------------------------------------------ vocabulary
    @property
    def training_vocabulary(self) -> List[str]:
        return list(self.model.train_vocabulary)

    def set_class_names(self, class_names: Optional[Sequence[str]]) -> List[str]:
        """Use ``class_names`` (None: the training vocabulary) for the next predictions; computes
        (or reads from the cache) their text embeddings now. Returns the checked names."""
        if class_names is None:
            names = self.training_vocabulary
            if not names:
                raise ConfigError(
                    "no class names given and the config has no training vocabulary "
                    "(DATASETS.TRAIN[0] has no stuff_classes): pass class names"
                )
        else:
            names = check_class_names(class_names)
        self.model.set_vocabulary(names)  # a closed-set model refuses other names
        # the output classes: the names, plus whatever the model adds (SAN's "other" when it
        # augments the vocabulary)
        self.class_names = list(self.model.vocabulary_for({}))
        meta_colors = None
        if self.train_metadata is not None and names == self.training_vocabulary:
            meta_colors = self.train_metadata.get("stuff_colors", None)
        self.colors = class_colors(len(self.class_names), meta_colors)
        return self.class_names

    # ------------------------------------------------------------------------------ inference
    def input_problem(self, image_rgb: np.ndarray) -> Optional[str]:
        """Why the model cannot take this image, or None: the evaluation geometry
        (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) would resize a side to 0 pixels (a
        3000x8 strip). Decided from the transforms alone, before any resizing."""
        h, w = image_rgb.shape[:2]
        for aug in self.augs.augs:
            tfm = aug.get_transform(image_rgb)
            new_h, new_w = getattr(tfm, "new_h", h), getattr(tfm, "new_w", w)
            if new_h < 1 or new_w < 1:
                return (
                    f"a {w}x{h} image would be resized to {new_w}x{new_h} for the model "
                    f"(INPUT.MIN_SIZE_TEST={self.cfg.INPUT.MIN_SIZE_TEST}, "
                    f"INPUT.MAX_SIZE_TEST={self.cfg.INPUT.MAX_SIZE_TEST}): its aspect ratio is "
                    "too extreme; crop it"
                )
        return None

    def _to_input(self, image_rgb: np.ndarray) -> dict:
        image = to_rgb_uint8(image_rgb)
        problem = self.input_problem(image)
        if problem:
            raise DataError(problem)
        h, w = image.shape[:2]
        if self.input_format == "BGR":
            image = np.ascontiguousarray(image[:, :, ::-1])
        aug_input = T.AugInput(image)
        self.augs(aug_input)
        resized = aug_input.image
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": h, "width": w}

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], scores: bool = False) -> List[SegResult]:
        """Segment a batch of uint8 RGB images (``[H, W, 3]``, any sizes) in one forward pass.

        The label maps come from the model's coarse scores (``OpenVocabSegmenter.coarse_sem_seg``):
        from each pixel's candidate classes (``label_candidates``), or in class chunks, so
        neither memory nor time grows with ``K x H x W``; ``scores`` adds the (lazily computed)
        probabilities."""
        if not len(images):
            return []
        results = []
        for coarse in self.model.coarse_sem_seg([self._to_input(im) for im in images]):
            label = label_map(
                coarse, self.chunk_elements, self.label_candidates, self.exact_labels
            )
            label = label.to(torch.int32).cpu().numpy()
            probs = ScoreMaps(coarse, self.chunk_elements) if scores else None
            results.append(SegResult(label, probs, list(self.class_names)))
        return results

    def __call__(self, image_rgb: np.ndarray, scores: bool = False) -> SegResult:
        return self.predict([image_rgb], scores=scores)[0]

    def predict_batches(
        self, images: Iterable, batch_size: int = 1, scores: bool = False
    ) -> Iterator[tuple]:
        """Yield ``(item, image, SegResult)`` for an iterable of ``(item, uint8 RGB image)``,
        running ``batch_size`` images per forward pass."""
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        batch = []
        for item, image in images:
            batch.append((item, image))
            if len(batch) == batch_size:
                yield from self._run(batch, scores)
                batch = []
        if batch:
            yield from self._run(batch, scores)

    def _run(self, batch, scores):
        results = self.predict([im for _, im in batch], scores=scores)
        for (item, image), res in zip(batch, results):
            yield item, image, res

    def overlay(self, image_rgb: np.ndarray, result: SegResult, alpha: float = 0.5) -> np.ndarray:
        """The image blended with the label map's colours and a legend of the classes present."""
        return overlay_with_legend(image_rgb, result.label, result.class_names, self.colors, alpha)
