"""The testbed's own small CLIP: trained contrastively on the generated captioned world.

The architecture is an open_clip ``CLIP`` described by a model config in
``testbed/model_configs/`` (registered with open_clip when ``clipdistill.testbed`` is imported, as
``import clipdistill`` does), so the trained weights load like any open_clip checkpoint:
``MODEL.CLIPDISTILL.TEACHER.NAME CNN-8-testbed`` and
``MODEL.CLIPDISTILL.TEACHER.WEIGHTS weights/testbed_clip_cnn8.safetensors``. The tokenizer is
open_clip's default BPE tokenizer (shipped inside open_clip). Two image towers are available
(``towers.py``): ``CNN-8-testbed`` (the shipped one: a small BatchNorm CNN whose image
embedding is the mean of per-location embeddings) and ``ViT-8-testbed`` (a ViT with a conv stem
and average pooling).

The recipe (``ToyClipRecipe``) fights contrastive feature suppression: colour alone separates
most captions of a random batch, so a model trained on full captions from the start learns
colour and never shape. A curriculum first trains on captions that name shapes only ("a star and
a ring."), where shape is the only signal, then on the full captions ("a red star and a blue
ring.").
"""

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.synthetic import DEFAULT_WORLD, Scenes, World, caption_of, render_scenes, sample_scenes
from ..modeling.clip.loader import clip_pixel_stats
from ..utils.io import atomic_path

__all__ = [
    "TESTBED_CLIP_NAME",
    "TESTBED_CLIP_WEIGHTS",
    "ToyClipRecipe",
    "single_object_set",
    "image_embeddings",
    "zero_shot_scores",
    "classification_metrics",
    "evaluate_open_clip",
    "train_toy_clip",
    "save_toy_clip",
    "evaluate_weights_file",
    "SHIPPED_TEACHER_ACCURACY",
]

logger = logging.getLogger(__name__)

#: open_clip model name of the shipped testbed CLIP (``model_configs/CNN-8-testbed.json``).
TESTBED_CLIP_NAME = "CNN-8-testbed"
#: The shipped weights, relative to the repository root (``tools/train_toy_clip.py`` writes them).
TESTBED_CLIP_WEIGHTS = os.path.join("weights", "testbed_clip_cnn8.safetensors")
#: Zero-shot accuracy (%) of the shipped file on ``single_object_set(DEFAULT_WORLD, 20)`` (720
#: images, 37 names), as ``evaluate_weights_file`` measures it (docs/TESTBED.md)
SHIPPED_TEACHER_ACCURACY = {"top1": 100.0, "colour": 100.0, "shape": 100.0}


@dataclass
class ToyClipRecipe:
    """Everything that determines a training run (stored in the weights file's metadata)."""

    model_name: str = TESTBED_CLIP_NAME
    colours: Tuple[str, ...] = DEFAULT_WORLD.colours
    shapes: Tuple[str, ...] = DEFAULT_WORLD.shapes
    image_size: int = 64
    steps: int = 600
    #: curriculum: the first ``shape_steps`` steps use shape-only captions
    shape_steps: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    #: probabilities of 0, 1, 2, 3 objects per training image (full captions)
    num_objects_p: Tuple[float, ...] = (0.1, 0.5, 0.25, 0.15)
    #: the same during the shape-only phase (mostly single objects: shape is the only signal)
    shape_num_objects_p: Tuple[float, ...] = (0.1, 0.7, 0.2, 0.0)
    #: fraction of the full-caption batches drawn from one shape only, where colour alone
    #: separates the captions. 0 in the shipped recipe: at 0.5 colour is learnt sooner but shape
    #: is forgotten (the same suppression, mirrored; docs/TESTBED.md)
    colour_batch_fraction: float = 0.0
    seed: int = 0
    #: evaluate (single-object zero-shot accuracy) every this many steps; 0: only at the end
    eval_every: int = 100
    #: single-object evaluation images per class (the fixed set of ``single_object_set``)
    eval_per_class: int = 20
    eval_seed: int = 12345
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def world(self) -> World:
        return World(colours=tuple(self.colours), shapes=tuple(self.shapes))


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
    """Zero-shot top-1, colour and shape accuracy (in %) over all class names of ``world``.

    Args:
        scores: ``[N, len(world.class_names)]`` scores in label order (background included).
        class_ids: ``[N]`` true label values (object classes).
    """
    pred = scores.argmax(dim=1).numpy()
    truth = np.asarray(class_ids)
    top1 = pred == truth
    obj = pred > 0
    pc, ps = np.divmod(np.maximum(pred, 1) - 1, world.num_shapes)
    tc, ts = np.divmod(truth - 1, world.num_shapes)
    return {
        "top1": 100.0 * float(top1.mean()),
        "colour": 100.0 * float((obj & (pc == tc)).mean()),
        "shape": 100.0 * float((obj & (ps == ts)).mean()),
        "num_images": int(len(truth)),
        "num_names": int(scores.shape[1]),
    }


def _text_embeddings(model, tokenizer, names: Sequence[str]) -> torch.Tensor:
    tokens = tokenizer([caption_of([n]) if n else "" for n in names])
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


@torch.no_grad()
def evaluate_open_clip(model, tokenizer, world: World, images, class_ids) -> Dict:
    """Zero-shot metrics of a raw open_clip model (prompts: the captions of single classes, the
    ``"caption"`` template set of the teacher)."""
    was_training = model.training
    model.eval()
    mean, std = clip_pixel_stats(model.visual)
    text = _text_embeddings(model, tokenizer, world.class_names)
    feats = image_embeddings(lambda x: model.encode_image((x - mean) / std), images)
    metrics = classification_metrics(feats @ text.t(), class_ids, world)
    # shape prompts alone ("a star."): what the image tower knows of shape, whatever the colour
    shapes = _text_embeddings(model, tokenizer, world.shapes)
    pred = (feats @ shapes.t()).argmax(1).numpy()
    metrics["shape_prompt"] = 100.0 * float((pred == (class_ids - 1) % world.num_shapes).mean())
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
        log: called with every evaluation record (``{"step", "top1", "colour", "shape", ...}``).
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
        shape_phase = step < recipe.shape_steps
        p = recipe.shape_num_objects_p if shape_phase else recipe.num_objects_p
        classes = None
        if not shape_phase and rng.random() < recipe.colour_batch_fraction:
            shape = int(rng.integers(world.num_shapes))
            classes = [world.class_id(c, shape) for c in range(world.num_colours)]
        scenes = sample_scenes(rng, recipe.batch_size, world, p, classes=classes)
        images, _ = render_scenes(rng, scenes, recipe.image_size)
        captions = scenes.shape_captions() if shape_phase else scenes.captions()
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
                "phase": "shape" if shape_phase else "full",
                "loss": loss.item(),
                "logit_scale": model.logit_scale.exp().item(),
                "seconds": round(time.perf_counter() - start, 1),
                **evaluate_open_clip(model, tokenizer, world, eval_images, eval_ids),
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
) -> Dict:
    """Zero-shot accuracy of a weights file loaded the way the project loads a teacher
    (``CLIPTeacher``: open_clip's local-file path, prompts of the ``"caption"`` template set), on
    the fixed single-object set ``single_object_set(world, per_class, image_size, seed)``."""
    from ..modeling.teacher import CLIPTeacher

    teacher = CLIPTeacher(
        model_name=model_name, weights=weights, image_size=image_size, templates="caption"
    )
    images, ids = single_object_set(world, per_class, image_size, seed)
    text = teacher.encode_text(world.class_names)
    scores = zero_shot_scores(teacher.encode_image, text, images)
    return classification_metrics(scores, ids, world)
