"""The testbed's own small CLIP: trained contrastively on the generated captioned world.

The architecture is an open_clip ``CLIP`` described by a model config in
``testbed/model_configs/`` (registered with open_clip when ``clipdistill.testbed`` is imported, as
``import clipdistill`` does), so the trained weights load like any open_clip checkpoint:
``MODEL.CLIPDISTILL.TEACHER.NAME CNN-4-testbed`` and
``MODEL.CLIPDISTILL.TEACHER.WEIGHTS weights/testbed_clip_cnn4.safetensors``. The tokenizer is
open_clip's default BPE tokenizer (shipped inside open_clip). Two image towers are available
(``towers.py``): ``CNN-4-testbed`` (the shipped one: a small BatchNorm CNN with a 15-pixel
receptive field, pooled by attention over its per-location embeddings) and ``ViT-8-testbed`` (a
ViT with a conv stem and average pooling).

The recipe (``ToyClipRecipe``) is trained on image-caption pairs only, with open_clip's
contrastive loss; no mask, box or region-caption pairing is used. Two choices make it localise:

- a **curriculum** against contrastive feature suppression: colour alone separates most captions
  of a random batch, so a model trained on full captions from the start learns colour and never
  pattern. The first ``pattern_steps`` steps use captions that name patterns only ("a striped
  patch and a dotted patch."), then full captions ("a red striped patch and a blue dotted
  patch.");
- **random crops captioned with what they contain** (``crop_views``), as web images are crops of
  scenes whose captions name what is visible: an object mostly inside the crop is named, one
  mostly outside is not, and a crop that cuts an object in half is not used.
"""

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.synthetic import DEFAULT_WORLD, Scenes, World, caption_of, render_scenes, sample_scenes
from ..evaluation.zero_shot import class_iou, seen_unseen_miou
from ..modeling.clip.loader import clip_pixel_stats
from ..utils.io import atomic_path

__all__ = [
    "TESTBED_CLIP_NAME",
    "TESTBED_CLIP_WEIGHTS",
    "TESTBED_DENSE_IMAGE_SIZE",
    "ToyClipRecipe",
    "single_object_set",
    "crop_views",
    "dense_zero_shot",
    "image_embeddings",
    "zero_shot_scores",
    "classification_metrics",
    "evaluate_open_clip",
    "train_toy_clip",
    "save_toy_clip",
    "evaluate_weights_file",
    "SHIPPED_TEACHER_ACCURACY",
    "SHIPPED_TEACHER_DENSE",
]

logger = logging.getLogger(__name__)

#: open_clip model name of the shipped testbed CLIP (``model_configs/CNN-4-testbed.json``).
TESTBED_CLIP_NAME = "CNN-4-testbed"
#: The shipped weights, relative to the repository root (``tools/train_toy_clip.py`` writes them).
TESTBED_CLIP_WEIGHTS = os.path.join("weights", "testbed_clip_cnn4.safetensors")
#: Input side of the testbed teachers' dense features: the 64-pixel images upsampled 1.5x, so
#: that a location's receptive field covers less of an object (docs/TESTBED.md, section 4)
TESTBED_DENSE_IMAGE_SIZE = 96
#: Zero-shot accuracy (%) of the shipped file on ``single_object_set(DEFAULT_WORLD, 20)`` (720
#: images, 37 names), and its training-free dense segmentation (``dense_zero_shot``, 300 images,
#: at ``TESTBED_DENSE_IMAGE_SIZE``), as ``evaluate_weights_file`` measures them (docs/TESTBED.md)
SHIPPED_TEACHER_ACCURACY = {"top1": 99.9, "colour": 100.0, "pattern": 99.9}
SHIPPED_TEACHER_DENSE = {"mIoU": 50.5, "mIoU-unseen": 49.5, "background IoU": 80.8}


@dataclass
class ToyClipRecipe:
    """Everything that determines a training run (stored in the weights file's metadata)."""

    model_name: str = TESTBED_CLIP_NAME
    colours: Tuple[str, ...] = DEFAULT_WORLD.colours
    patterns: Tuple[str, ...] = DEFAULT_WORLD.patterns
    image_size: int = 64
    steps: int = 2500
    #: curriculum: the first ``pattern_steps`` steps use pattern-only captions
    pattern_steps: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 100
    #: probabilities of 0, 1, 2, 3 objects per training image (full captions)
    num_objects_p: Tuple[float, ...] = (0.1, 0.5, 0.25, 0.15)
    #: the same during the pattern-only phase (mostly single objects)
    pattern_num_objects_p: Tuple[float, ...] = (0.1, 0.7, 0.2, 0.0)
    #: probability that a training image is replaced by a random crop of itself (``crop_views``)
    crop_p: float = 0.5
    #: smallest crop side, as a fraction of the image side
    crop_min_scale: float = 0.35
    seed: int = 0
    #: evaluate (single-object zero-shot accuracy) every this many steps; 0: only at the end
    eval_every: int = 100
    #: single-object evaluation images per class (the fixed set of ``single_object_set``)
    eval_per_class: int = 20
    #: generated images of the dense zero-shot evaluation at each evaluation (0: none)
    eval_dense_images: int = 100
    eval_seed: int = 12345
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def world(self) -> World:
        return World(colours=tuple(self.colours), patterns=tuple(self.patterns))


def single_object_set(
    world: World, per_class: int, size: int = 64, seed: int = 12345
) -> Tuple[np.ndarray, np.ndarray]:
    """A fixed, class-balanced set of images showing exactly one object.

    Returns:
        images ``[N, size, size, 3]`` uint8 and their class ids ``[N]`` (label values, 1..C),
        ``N = per_class * C``.
    """
    ids = np.repeat(np.arange(1, world.num_object_classes + 1), per_class)
    rng = np.random.default_rng(seed)
    images, _ = render_scenes(rng, Scenes(world=world, class_ids=ids[:, None]), size)
    return images, ids


def crop_views(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    scenes: Scenes,
    p: float,
    min_scale: float,
    named: float = 0.5,
    cut: float = 0.15,
) -> Tuple[np.ndarray, Scenes]:
    """Replace each image, with probability ``p``, by a random square crop of itself resized to
    the full size, captioned with what it shows.

    The crop's side is uniform in ``[min_scale, 1]`` of the image's. An object with at least
    ``named`` of its pixels inside the crop is named in the caption, one with less than ``cut``
    is not; a crop that shows between ``cut`` and ``named`` of an object is not used (the image
    stays whole), so that no caption names a sliver or omits half an object.

    Returns:
        the images (uint8 ``[n, S, S, 3]``) and their scenes (objects not named removed).
    """
    n, size = images.shape[0], images.shape[1]
    out_images = images.copy()
    ids = scenes.class_ids.copy()
    draw = rng.random(n) < p
    sides = np.round(rng.uniform(min_scale, 1.0, n) * size).astype(int)
    x0 = rng.integers(0, size - sides + 1)
    y0 = rng.integers(0, size - sides + 1)
    for i in np.flatnonzero(draw):
        s, x, y = sides[i], x0[i], y0[i]
        crop = labels[i, y : y + s, x : x + s]
        row = ids[i]
        total = np.bincount(labels[i].ravel(), minlength=256)
        inside = np.bincount(crop.ravel(), minlength=256)
        visible = np.where(total[row] > 0, inside[row] / np.maximum(total[row], 1), 0.0)
        present = row > 0
        if np.any(present & (visible >= cut) & (visible < named)):
            continue
        keep = row[present & (visible >= named)]
        ids[i] = 0
        ids[i, : len(keep)] = keep
        out_images[i] = cv2.resize(
            np.ascontiguousarray(images[i, y : y + s, x : x + s]),
            (size, size),
            interpolation=cv2.INTER_LINEAR,
        )
    return out_images, Scenes(world=scenes.world, class_ids=ids)


def dense_zero_shot(
    teacher, world: World = DEFAULT_WORLD, num_images: int = 300, size: int = 64, seed: int = 54321
) -> Dict[str, float]:
    """Training-free dense zero-shot segmentation of a fixed generated set by a ``CLIPTeacher``.

    Every pixel takes the name (of all ``world.class_names``, with the teacher's prompts) whose
    text embedding is closest to the teacher's dense feature there (``encode_image_dense`` at its
    ``dense_image_size``, bilinearly upsampled), as the ``MaskCLIP`` META_ARCH does.

    Returns:
        ``{"mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "background IoU"}`` in % (the
        evaluator's definitions, ``seen_unseen_miou``).
    """
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(rng, num_images, world)
    images, labels = render_scenes(rng, scenes, size)
    text = teacher.encode_text(world.class_names)
    k = len(world.class_names)
    conf = np.zeros((k + 1, k + 1), np.int64)  # detectron2's layout (last row: ignored)
    for i in range(0, num_images, 64):
        x = torch.from_numpy(images[i : i + 64]).permute(0, 3, 1, 2).float()
        dense = teacher.encode_image_dense(x)
        logits = torch.einsum("bchw,kc->bkhw", dense, text)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        pred = logits.argmax(1).numpy().ravel()
        conf += np.bincount(
            (k + 1) * pred + labels[i : i + 64].ravel(), minlength=(k + 1) ** 2
        ).reshape(k + 1, k + 1)
    iou, valid = class_iou(conf)
    unseen = np.isin(np.arange(k), world.unseen_ids)
    out = {"mIoU": 100.0 * float(iou[valid].mean())}
    out.update(seen_unseen_miou(conf, unseen))
    out["background IoU"] = 100.0 * float(iou[0])
    return {key: round(v, 2) for key, v in out.items()}


def _to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x - mean) / std


@torch.no_grad()
def image_embeddings(
    encode_image: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, batch_size: int = 256
) -> torch.Tensor:
    """Normalised embeddings ``[N, C]`` of images (uint8 NHWC, 0..255); ``encode_image`` takes
    float ``[B, 3, H, W]`` in 0..255 and returns ``[B, C]``."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
        out.append(F.normalize(encode_image(x.permute(0, 3, 1, 2).float()).float(), dim=-1))
    return torch.cat(out)


def zero_shot_scores(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    text_embeddings: torch.Tensor,
    images: np.ndarray,
) -> torch.Tensor:
    """Cosine similarities ``[N, K]`` of images to ``K`` normalised text embeddings."""
    return image_embeddings(encode_image, images) @ text_embeddings.float().t()


def classification_metrics(scores: torch.Tensor, class_ids: np.ndarray, world: World) -> Dict:
    """Zero-shot top-1, colour and pattern accuracy (in %) over all class names of ``world``.

    Args:
        scores: ``[N, len(world.class_names)]`` scores in label order (background included).
        class_ids: ``[N]`` true label values (object classes).
    """
    pred = scores.argmax(dim=1).numpy()
    truth = np.asarray(class_ids)
    top1 = pred == truth
    obj = pred > 0
    pc, pp = np.divmod(np.maximum(pred, 1) - 1, world.num_patterns)
    tc, tp = np.divmod(truth - 1, world.num_patterns)
    return {
        "top1": 100.0 * float(top1.mean()),
        "colour": 100.0 * float((obj & (pc == tc)).mean()),
        "pattern": 100.0 * float((obj & (pp == tp)).mean()),
        "num_images": int(len(truth)),
        "num_names": int(scores.shape[1]),
    }


class _RawTeacher:
    """A raw open_clip model seen as a teacher by ``dense_zero_shot`` during training: caption
    prompts, dense method ``"tokens"`` at the training size."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.mean, self.std = clip_pixel_stats(model.visual)

    def encode_text(self, names):
        return _text_embeddings(self.model, self.tokenizer, names)

    def encode_image_dense(self, images):
        from ..modeling.clip.dense import dense_features

        x = (images - self.mean) / self.std
        return F.normalize(dense_features(self.model.visual, x, "tokens").float(), dim=1)


def _text_embeddings(model, tokenizer, names: Sequence[str]) -> torch.Tensor:
    tokens = tokenizer([caption_of([n]) if n else "" for n in names])
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


@torch.no_grad()
def evaluate_open_clip(
    model, tokenizer, world: World, images, class_ids, dense_images: int = 0
) -> Dict:
    """Zero-shot metrics of a raw open_clip model (prompts: the captions of single classes, the
    ``"caption"`` template set of the teacher); with ``dense_images``, also its dense zero-shot
    segmentation of that many generated images (``dense_zero_shot``, keys ``"dense ..."``)."""
    was_training = model.training
    model.eval()
    mean, std = clip_pixel_stats(model.visual)
    text = _text_embeddings(model, tokenizer, world.class_names)
    feats = image_embeddings(lambda x: model.encode_image((x - mean) / std), images)
    metrics = classification_metrics(feats @ text.t(), class_ids, world)
    # pattern prompts alone ("a striped patch."): what the tower knows of pattern, any colour
    patterns = [world.pattern_name(p) for p in range(world.num_patterns)]
    pred = (feats @ _text_embeddings(model, tokenizer, patterns).t()).argmax(1).numpy()
    metrics["pattern_prompt"] = 100.0 * float((pred == (class_ids - 1) % world.num_patterns).mean())
    if dense_images:
        dense = dense_zero_shot(_RawTeacher(model, tokenizer), world, dense_images, images.shape[1])
        metrics.update({f"dense {k}": v for k, v in dense.items()})
    model.train(was_training)
    return metrics


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # open_clip's training excludes gains, biases, embeddings of rank < 2 and logit_scale
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def _lr_at(step: int, recipe: ToyClipRecipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * t))


def train_toy_clip(
    recipe: ToyClipRecipe, log: Optional[Callable[[Dict], None]] = None
) -> Tuple[torch.nn.Module, List[Dict]]:
    """Train the testbed CLIP from scratch following ``recipe`` (on the CPU, deterministic).

    Args:
        recipe: the run's settings.
        log: called with every evaluation record (``{"step", "top1", "colour", "pattern",
            ...}``).
    Returns:
        The trained open_clip model (eval mode) and the list of evaluation records.
    """
    world = recipe.world
    torch.manual_seed(recipe.seed)
    model = open_clip.create_model(recipe.model_name, pretrained=None, device="cpu")
    tokenizer = open_clip.get_tokenizer(recipe.model_name)
    if tuple(model.visual.image_size) != (recipe.image_size, recipe.image_size):
        raise ValueError(
            f"{recipe.model_name} takes {model.visual.image_size} images, the recipe "
            f"{recipe.image_size}"
        )
    mean, std = clip_pixel_stats(model.visual)
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    loss_fn = open_clip.ClipLoss()
    rng = np.random.default_rng(recipe.seed)
    eval_images, eval_ids = single_object_set(
        world, recipe.eval_per_class, recipe.image_size, recipe.eval_seed
    )
    token_cache: Dict[str, torch.Tensor] = {}

    def tokenize(captions: List[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if missing:
            for c, t in zip(missing, tokenizer(missing)):
                token_cache[c] = t
        return torch.stack([token_cache[c] for c in captions])

    history: List[Dict] = []
    start = time.perf_counter()
    model.train()
    for step in range(recipe.steps):
        for g in optimizer.param_groups:
            g["lr"] = _lr_at(step, recipe)
        pattern_phase = step < recipe.pattern_steps
        p = recipe.pattern_num_objects_p if pattern_phase else recipe.num_objects_p
        scenes = sample_scenes(rng, recipe.batch_size, world, p)
        images, labels = render_scenes(rng, scenes, recipe.image_size)
        images, scenes = crop_views(rng, images, labels, scenes, recipe.crop_p, recipe.crop_min_scale)
        captions = scenes.pattern_captions() if pattern_phase else scenes.captions()
        image_features = model.encode_image(_to_tensor(images, mean, std), normalize=True)
        text_features = model.encode_text(tokenize(captions), normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # as in CLIP: the temperature is clamped at 100
            model.logit_scale.clamp_(0, math.log(100))
        last = step + 1 == recipe.steps
        if last or (recipe.eval_every and (step + 1) % recipe.eval_every == 0):
            record = {
                "step": step + 1,
                "phase": "pattern" if pattern_phase else "full",
                "loss": loss.item(),
                "logit_scale": model.logit_scale.exp().item(),
                "seconds": round(time.perf_counter() - start, 1),
                **evaluate_open_clip(
                    model, tokenizer, world, eval_images, eval_ids, recipe.eval_dense_images
                ),
            }
            history.append(record)
            if log is not None:
                log(record)
    model.eval()
    return model, history


def save_toy_clip(
    model: torch.nn.Module, path: str, recipe: ToyClipRecipe, history: List[Dict]
) -> str:
    """Write the weights as one float16 safetensors file (atomically), with the recipe and the
    accuracy curve in its metadata; returns ``path``. open_clip loads it into the float32
    architecture (``open_clip.create_model(name, pretrained=path)``)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "recipe": json.dumps(asdict(recipe)),
        "history": json.dumps(history),
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
    }
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=metadata)
    return path


def evaluate_weights_file(
    weights: str,
    model_name: str = TESTBED_CLIP_NAME,
    world: World = DEFAULT_WORLD,
    per_class: int = 20,
    image_size: int = 64,
    seed: int = 12345,
    dense_images: int = 300,
    dense_image_size: int = TESTBED_DENSE_IMAGE_SIZE,
) -> Dict:
    """Zero-shot accuracy of a weights file loaded the way the project loads a teacher
    (``CLIPTeacher``: open_clip's local-file path, prompts of the ``"caption"`` template set), on
    the fixed single-object set ``single_object_set(world, per_class, image_size, seed)``, and
    (``dense_images`` > 0) its dense zero-shot segmentation of ``image_size`` scenes
    (``dense_zero_shot``, dense method ``"tokens"`` on the images resized to
    ``dense_image_size``; keys ``"dense ..."``)."""
    from ..modeling.teacher import CLIPTeacher

    teacher = CLIPTeacher(
        model_name=model_name,
        weights=weights,
        image_size=image_size,
        dense_image_size=dense_image_size,
        templates="caption",
        dense_method="tokens",
    )
    images, ids = single_object_set(world, per_class, image_size, seed)
    text = teacher.encode_text(world.class_names)
    scores = zero_shot_scores(teacher.encode_image, text, images)
    metrics = classification_metrics(scores, ids, world)
    if dense_images:
        dense = dense_zero_shot(teacher, world, dense_images, image_size)
        metrics.update({f"dense {k}": v for k, v in dense.items()})
    return metrics
