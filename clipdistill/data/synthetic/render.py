"""Vectorised rendering of the captioned world: whole batches of scenes at once with numpy.

A scene has up to ``MAX_OBJECTS`` objects, each in its own region of the image: the whole image
for one object, a half for two, a quadrant for three or four (so objects never overlap and every
object named in the caption is visible), with a random silhouette, size, position inside its
region and rotation. Backgrounds are low-saturation: a grey level with a faint tint, a
linear gradient, low-frequency blotches, optional faint stripes and pixel noise. Objects are
drawn in their colour (with per-object brightness and hue jitter) and their pattern: the colour
alone, or alternated with a dark tone of it (stripes, dots, checks, zigzags, a grid), with a
per-object period and the object's rotation; then per-pixel noise.

Everything is drawn from one ``numpy.random.Generator``: the same generator state gives the same
images, labels and captions.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from .world import COLOURS, PATTERNS, SHAPES, World, caption_of

__all__ = [
    "MAX_OBJECTS",
    "Scenes",
    "sample_scenes",
    "render_scenes",
    "shape_masks",
    "pattern_masks",
]

#: At most one object per quadrant.
MAX_OBJECTS = 4
#: How far a shape reaches beyond its radius (star and triangle tips): regions keep this margin.
_EXTENT = 1.2
#: Default probabilities of 0, 1, 2 and 3 objects per image.
DEFAULT_NUM_OBJECTS_P = (0.1, 0.3, 0.3, 0.3)
#: Range of a pattern's period, in pixels of a 64-pixel image (scaled with the image size).
PATTERN_PERIOD = (4.5, 6.5)
#: Brightness of a pattern's dark tone, relative to the object's colour.
DARK_TONE = 0.42


@dataclass
class Scenes:
    """The content of ``n`` scenes; slot ``k`` of scene ``i`` holds an object iff
    ``class_ids[i, k] > 0``. Objects come first in their row (slots ``0 .. count-1``)."""

    world: World
    class_ids: np.ndarray  # [n, K] int64, label value of each object, 0 = no object

    @property
    def count(self) -> np.ndarray:
        return (self.class_ids > 0).sum(1)

    def names(self, i: int) -> List[str]:
        """Class names of the objects of scene ``i``, in slot order."""
        names = self.world.class_names
        return [names[c] for c in self.class_ids[i] if c > 0]

    def captions(self) -> List[str]:
        """The full captions ("a red star and a blue ring.")."""
        return [caption_of(self.names(i)) for i in range(len(self.class_ids))]

    def pattern_captions(self) -> List[str]:
        """Captions naming patterns only ("a striped patch and a dotted patch."); "an empty
        background." for none."""
        return [pattern_caption(self.world, row) for row in self.class_ids]


def pattern_caption(world: World, class_ids) -> str:
    """The caption of objects ``class_ids`` (label values; 0s skipped) without their colours."""
    return caption_of(
        [world.pattern_name(world.colour_pattern(int(c))[1]) for c in class_ids if c > 0]
    )


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    world: World,
    num_objects_p: Sequence[float] = DEFAULT_NUM_OBJECTS_P,
    classes: Optional[Sequence[int]] = None,
) -> Scenes:
    """Draw the content of ``n`` scenes: how many objects, and which distinct classes.

    Args:
        rng: the random generator.
        n: number of scenes.
        world: the vocabulary.
        num_objects_p: probabilities of 0, 1, 2, ... objects (at most ``MAX_OBJECTS``).
        classes: label values to draw from (default: every object class of ``world``).
    """
    p = np.asarray(num_objects_p, dtype=np.float64)
    if p.ndim != 1 or not 1 <= len(p) <= MAX_OBJECTS + 1 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(
            f"num_objects_p={list(num_objects_p)}: give probabilities of 0..{MAX_OBJECTS} objects"
        )
    pool = np.arange(1, world.num_object_classes + 1) if classes is None else np.asarray(classes)
    if pool.size == 0 or pool.min() < 1 or pool.max() > world.num_object_classes:
        raise ValueError(f"classes={list(pool)} are not object classes of {world}")
    k = len(p) - 1
    if k > pool.size:
        raise ValueError(f"{k} distinct objects per image but only {pool.size} classes")
    count = rng.choice(len(p), size=n, p=p / p.sum())
    # distinct classes per scene: the first k of a random permutation of the pool
    order = np.argsort(rng.random((n, pool.size)), axis=1)[:, :k] if k else np.zeros((n, 0), int)
    ids = pool[order] if k else order
    ids = np.where(np.arange(k)[None, :] < count[:, None], ids, 0).astype(np.int64)
    return Scenes(world=world, class_ids=ids)


def _polygon(rho, phi, sides: int, circumradius: float):
    """Inside test of a regular polygon (one vertex on the +u axis) in polar coordinates."""
    sector = 2 * np.pi / sides
    a = np.mod(phi, sector) - sector / 2
    return rho * np.cos(a) <= circumradius * np.cos(np.pi / sides)


def shape_masks(u: np.ndarray, v: np.ndarray, shape_ids: np.ndarray) -> np.ndarray:
    """Boolean masks of shapes in object coordinates (the object's radius is 1).

    Args:
        u, v: object-centred, rotated, radius-normalised coordinates, any common shape ``X``.
        shape_ids: int array broadcastable to ``X``: the index in ``SHAPES`` of each element.
    Returns:
        bool array of shape ``X``.
    """
    rho = np.sqrt(u * u + v * v)
    phi = None  # the polar angle, computed only for the shapes that need it
    out = np.zeros(np.broadcast(u, shape_ids).shape, dtype=bool)
    for s, name in enumerate(SHAPES):
        sel = shape_ids == s
        if not np.any(sel):
            continue
        if name in ("triangle", "star") and phi is None:
            phi = np.arctan2(v, u)
        if name == "circle":
            m = rho <= 1.0
        elif name == "ring":
            m = (rho <= 1.0) & (rho >= 0.52)
        elif name == "square":
            m = np.maximum(np.abs(u), np.abs(v)) <= 0.82
        elif name == "triangle":
            m = _polygon(rho, phi, 3, 1.18)
        elif name == "star":
            t = np.mod(phi * 5 / (2 * np.pi), 1.0)
            d = 2 * np.minimum(t, 1 - t)  # 0 at a spike, 1 between spikes
            m = rho <= 1.15 * (1 - d) + 0.48 * d
        elif name == "cross":
            m = ((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) | (
                (np.abs(v) <= 0.34) & (np.abs(u) <= 1.0)
            )
        elif name == "crescent":
            m = (rho <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.8**2)
        elif name == "heart":
            x, y = 1.15 * u, -1.15 * v + 0.25
            m = (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
        else:  # pragma: no cover - SHAPES and this function are edited together
            raise NotImplementedError(name)
        out |= sel & m
    return out


def pattern_masks(pu: np.ndarray, pv: np.ndarray, pattern_ids, period) -> np.ndarray:
    """Where a pattern draws its dark tone, in pixel coordinates of the object's rotated frame.

    Args:
        pu, pv: object-centred, rotated coordinates in pixels, any common shape ``X``.
        pattern_ids: int array broadcastable to ``X``: the index in ``PATTERNS`` of each element.
        period: float array broadcastable to ``X``: the pattern's period in pixels.
    Returns:
        bool array of shape ``X`` (all False for ``"plain"``).
    """
    out = np.zeros(np.broadcast(pu, pattern_ids).shape, dtype=bool)
    period = np.asarray(period, dtype=np.float32)
    for p, name in enumerate(PATTERNS):
        sel = pattern_ids == p
        if name == "plain" or not np.any(sel):
            continue
        a, b = np.mod(pu, period), np.mod(pv, period)
        if name == "striped":
            m = a < period / 2
        elif name == "dotted":
            m = (a - period / 2) ** 2 + (b - period / 2) ** 2 < (0.3 * period) ** 2
        elif name == "checked":
            cell = period / 2
            m = (np.floor(pu / cell) + np.floor(pv / cell)) % 2 == 1
        elif name == "zigzag":  # stripes bent by a triangle wave along them
            t = np.mod(pv / (1.2 * period), 1.0)
            m = np.mod(pu + 0.45 * period * (2 * np.abs(2 * t - 1) - 1), period) < period / 2
        elif name == "gridded":
            m = (a < 0.28 * period) | (b < 0.28 * period)
        else:  # pragma: no cover - PATTERNS and this function are edited together
            raise NotImplementedError(name)
        out |= sel & m
    return out


def _smooth_noise(rng, n: int, size: int, grid: int = 6) -> np.ndarray:
    """``[n, size, size]`` low-frequency noise in [-1, 1]: a ``grid``x``grid`` random field,
    bilinearly upsampled (one matrix product per axis for the whole batch)."""
    field = rng.uniform(-1, 1, (n, grid, grid)).astype(np.float32)
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    w = (pos - lo).astype(np.float32)
    interp = np.zeros((size, grid), np.float32)
    interp[np.arange(size), lo] = 1 - w
    interp[np.arange(size), lo + 1] = w
    return interp @ field @ interp.T


def _uniform(rng, low, high, shape) -> np.ndarray:
    return rng.random(shape, dtype=np.float32) * np.float32(high - low) + np.float32(low)


def _backgrounds(rng, n: int, size: int) -> np.ndarray:
    """``[n, size, size, 3]`` float32 low-saturation backgrounds."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - np.float32(0.5)
    base = _uniform(rng, 45, 210, (n, 1, 1, 1))
    tint = rng.standard_normal((n, 1, 1, 3), dtype=np.float32) * np.float32(7)
    theta = _uniform(rng, 0, 2 * np.pi, (n, 1, 1))
    amp = _uniform(rng, -40, 40, (n, 1, 1))
    grey = amp * (np.cos(theta) * xx + np.sin(theta) * yy)
    grey += _uniform(rng, 0, 18, (n, 1, 1)) * _smooth_noise(rng, n, size)
    period = _uniform(rng, 4, 14, (n, 1, 1))
    stripe_theta = _uniform(rng, 0, np.pi, (n, 1, 1))
    stripe_amp = _uniform(rng, 0, 12, (n, 1, 1)) * (rng.random((n, 1, 1)) < 0.5)
    phase = (np.cos(stripe_theta) * xx + np.sin(stripe_theta) * yy) * (size / period)
    grey += stripe_amp * np.sign(np.sin(np.float32(2 * np.pi) * phase))
    noise = _uniform(rng, -9, 9, (n, size, size, 3))  # uniform: std 5.2
    return noise + (base + tint) + grey[..., None]


def _regions(rng, count: np.ndarray, k: int, size: int):
    """Disjoint regions of the objects of each scene: ``(x0, y0, half_w, half_h)``, each
    ``[n, k]``. One object: the whole image; two: the two halves (split left/right or top/bottom
    at random); three or four: one quadrant each, in random order."""
    n = len(count)
    h, q = size / 2, size / 4
    quadrant = np.argsort(rng.random((n, MAX_OBJECTS)), axis=1)[:, :k]
    vertical = rng.random((n, 1)) < 0.5
    slot = np.arange(k)[None, :]
    one, two = (count == 1)[:, None], (count == 2)[:, None]
    x0 = np.where(one, 0.0, np.where(two, np.where(vertical, slot % 2 * h, 0.0), quadrant % 2 * h))
    y0 = np.where(one, 0.0, np.where(two, np.where(vertical, 0.0, slot % 2 * h), quadrant // 2 * h))
    hx = np.where(one, h, np.where(two, np.where(vertical, q, h), q)) + 0 * slot
    hy = np.where(one, h, np.where(two, np.where(vertical, h, q), q)) + 0 * slot
    return x0, y0, hx, hy


def render_scenes(rng: np.random.Generator, scenes: Scenes, size: int = 64):
    """Draw ``scenes`` as images and label maps.

    Args:
        rng: the random generator (geometry, colours, backgrounds, noise).
        scenes: the content (``sample_scenes``).
        size: square image side in pixels (even, at least 32).
    Returns:
        images ``[n, size, size, 3]`` uint8 RGB, labels ``[n, size, size]`` uint8 (0 =
        background, else the object's class id).
    """
    if size < 32 or size % 2:
        raise ValueError(f"image size {size}: use an even number of pixels, at least 32")
    world = scenes.world
    ids = scenes.class_ids
    n, k = ids.shape
    if k > MAX_OBJECTS:
        raise ValueError(f"{k} object slots; at most {MAX_OBJECTS}")
    images = _backgrounds(rng, n, size)
    labels = np.zeros((n, size, size), np.uint8)
    if k == 0:
        return np.clip(images, 0, 255).astype(np.uint8), labels
    # geometry and colour of every slot (drawn for empty slots too: a fixed stream)
    rx, ry, hx, hy = _regions(rng, scenes.count, k, size)
    lo = np.where(scenes.count[:, None] <= 1, 0.5, 0.6)
    radius = rng.uniform(lo, 1.0, (n, k)) * np.minimum(hx, hy) / _EXTENT
    cx = rx + hx + rng.uniform(-1, 1, (n, k)) * (hx - _EXTENT * radius)
    cy = ry + hy + rng.uniform(-1, 1, (n, k)) * (hy - _EXTENT * radius)
    angle = rng.uniform(0, 2 * np.pi, (n, k))
    brightness = rng.uniform(0.8, 1.1, (n, k, 1))
    hue_jitter = rng.normal(0, 8, (n, k, 3))
    silhouette = rng.integers(0, len(world.silhouettes), (n, k))
    period = rng.uniform(*PATTERN_PERIOD, (n, k)) * (size / 64)
    colour, pattern = np.divmod(np.maximum(ids, 1) - 1, world.num_patterns)
    palette = np.array([COLOURS[c] for c in world.colours], np.float32)
    colours = (palette[colour] * brightness + hue_jitter).astype(np.float32)  # [n, k, 3]
    shape_index = np.array([SHAPES.index(s) for s in world.silhouettes])[silhouette]
    pattern_index = np.array([PATTERNS.index(p) for p in world.patterns])[pattern]

    # each object is drawn in its own region only (regions are disjoint); objects are grouped by
    # region size so that each group is one vectorised computation
    slot_map = np.zeros((n, size, size), np.uint8)  # 0: background, j + 1: the object of slot j
    dark = np.zeros((n, size, size), bool)  # the pattern's dark tone
    img_i, slot = np.nonzero(ids > 0)
    shapes_of = shape_index[img_i, slot]
    width, height = (2 * hx[img_i, slot]).astype(int), (2 * hy[img_i, slot]).astype(int)
    for w, h in sorted(set(zip(width.tolist(), height.tolist()))):
        g = (width == w) & (height == h)
        gi, gs = img_i[g], slot[g]
        x0, y0 = rx[gi, gs].astype(int), ry[gi, gs].astype(int)
        dx = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :] - (cx[gi, gs] - x0)[
            :, None, None
        ]
        dy = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None] - (cy[gi, gs] - y0)[
            :, None, None
        ]
        cos = np.cos(angle[gi, gs])[:, None, None]
        sin = np.sin(angle[gi, gs])[:, None, None]
        r = radius[gi, gs][:, None, None]
        u = ((cos * dx + sin * dy) / r).astype(np.float32)
        v = ((-sin * dx + cos * dy) / r).astype(np.float32)
        masks = np.zeros(u.shape, dtype=bool)
        for sh in np.unique(shapes_of[g]):
            sel = shapes_of[g] == sh
            masks[sel] = shape_masks(u[sel], v[sel], np.full((1, 1, 1), sh))
        tones = pattern_masks(
            u * r, v * r, pattern_index[gi, gs][:, None, None], period[gi, gs][:, None, None]
        )
        rows = y0[:, None, None] + np.arange(h)[None, :, None]
        cols = x0[:, None, None] + np.arange(w)[None, None, :]
        ii = gi[:, None, None]
        slot_map[ii, rows, cols] = np.where(masks, (gs + 1)[:, None, None], 0).astype(np.uint8)
        dark[ii, rows, cols] |= masks & tones
    flat = slot_map.reshape(n, -1).astype(np.int64)
    table = np.concatenate([np.zeros((n, 1), ids.dtype), ids], axis=1)
    labels = np.take_along_axis(table, flat, axis=1).reshape(n, size, size).astype(np.uint8)
    palette_rows = np.concatenate([np.zeros((n, 1, 3), np.float32), colours], axis=1)
    fill = np.take_along_axis(palette_rows, flat[..., None], axis=1).reshape(n, size, size, 3)
    fill *= np.where(dark, np.float32(DARK_TONE), np.float32(1))[..., None]
    fill += _uniform(rng, -10, 10, (n, size, size, 3))
    images = np.where((slot_map > 0)[..., None], fill, images)
    return np.clip(images, 0, 255).astype(np.uint8), labels
