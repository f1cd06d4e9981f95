"""Drawing of label maps: side-by-side comparisons of a prediction and its ground truth with a legend beside them, small
images upscaled (``compare_panels``, used by ``clipdistill.evaluation.visualize`` for
``tools/visualize_json_results.py``), indexed-colour label maps and fast blended overlays with a
legend (the deployment tools: ``tools/demo.py``, ``tools/web_demo.py``), and fonts for class names
in any script. Nothing here reads a dataset.

Label maps hold contiguous class indices ``0..K-1``; any other value (negative "no prediction",
the ignore label 255/65535, ...) is treated as unlabelled and never drawn.
"""

import functools
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colors import deterministic_colors

__all__ = [
    "side_by_side",
    "class_colors",
    "colorize_label",
    "label_map_image",
    "overlay_with_legend",
    "classes_present",
    "font_for",
    "upscale_factor",
    "nearest_upscale",
    "drop_small_regions",
    "blend",
    "legend_panel",
    "legend_entries",
    "compare_panels",
]


# ------------------------------------------------------------------------------------------------
# panels
# ------------------------------------------------------------------------------------------------
def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate RGB images horizontally (padded at the bottom to one height) with white gaps."""
    h = max(p.shape[0] for p in panels)
    cols = []
    for i, p in enumerate(panels):
        if p.shape[0] != h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        cols.append(p)
        if i + 1 < len(panels):
            cols.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(cols, axis=1)


# ------------------------------------------------------------------------------------------------
# deployment rendering: palette label maps and overlays with a legend
# ------------------------------------------------------------------------------------------------
def class_colors(num_classes: int, colors: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """``[K, 3]`` uint8 RGB colours: ``colors`` (e.g. a dataset's ``stuff_colors``) when it has
    at least ``num_classes`` entries, else clipdistill's deterministic palette."""
    if colors is not None and len(colors) >= num_classes:
        return np.asarray([list(c)[:3] for c in colors[:num_classes]], dtype=np.uint8)
    return np.asarray(deterministic_colors(num_classes), dtype=np.uint8).reshape(-1, 3)


def colorize_label(label: np.ndarray, colors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """RGB image of ``label`` and the boolean mask of labelled pixels (values in ``[0, K)``)."""
    label = np.asarray(label)
    valid = (label >= 0) & (label < len(colors))
    rgb = np.zeros(label.shape + (3,), np.uint8)
    rgb[valid] = colors[label[valid]]
    return rgb, valid


def label_map_image(label: np.ndarray, colors: np.ndarray) -> Image.Image:
    """The label map as an indexed-colour (mode ``P``) PNG-ready image whose palette holds the
    class colours, so that pixel values are the class indices and viewers show colours.

    More than 256 classes do not fit a palette: the map is then a 16-bit greyscale image (mode
    ``I;16``) of the indices. Unlabelled pixels are 255 (65535 for 16-bit), black in the palette.
    """
    label = np.asarray(label)
    k = len(colors)
    if k <= 255:
        idx = np.where((label >= 0) & (label < k), label, 255).astype(np.uint8)
        im = Image.fromarray(idx, mode="P")
        palette = np.zeros((256, 3), np.uint8)
        palette[:k] = colors
        im.putpalette(palette.reshape(-1).tolist())
        return im
    idx = np.where((label >= 0) & (label < k), label, 65535).astype(np.uint16)
    return Image.fromarray(idx, mode="I;16")


def classes_present(label: np.ndarray, num_classes: int) -> List[Tuple[int, int]]:
    """``[(class index, pixel count)]`` of the classes in ``label``, largest first."""
    label = np.asarray(label)
    counts = np.bincount(label[(label >= 0) & (label < num_classes)].ravel(), minlength=num_classes)
    order = np.argsort(-counts, kind="stable")
    return [(int(i), int(counts[i])) for i in order if counts[i] > 0]


# ------------------------------------------------------------------------------------------------
# fonts: Pillow's default font has Latin letters only; names in other scripts need another font
# ------------------------------------------------------------------------------------------------
#: a font file used first when set (any .ttf/.otf/.ttc)
FONT_ENV = "CLIPDISTILL_FONT"
#: fonts tried, in order, for characters the default font lacks: Noto CJK (Debian's
#: fonts-noto-cjk, installed by scripts/install_fonts.sh) and other common CJK fonts, then DejaVu
#: (Latin with accents, Greek, Cyrillic; also shipped with matplotlib)
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
_warned_glyphs = set()


def _font_files() -> List[str]:
    files = [os.environ[FONT_ENV]] if os.environ.get(FONT_ENV) else []
    files += list(FONT_CANDIDATES)
    try:
        import matplotlib

        files.append(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
    except ImportError:  # pragma: no cover
        pass
    return [f for f in files if os.path.isfile(f)]


@functools.lru_cache(maxsize=32)
def _load_font(path: str, size: int):
    if not path:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def _glyph(font, ch: str):
    mask = font.getmask(ch)
    return mask.size, bytes(mask)


@functools.lru_cache(maxsize=4096)
def _has_glyph(path: str, ch: str) -> bool:
    """Whether the font ``path`` ("" = Pillow's default) draws ``ch`` as something else than its
    missing-glyph box (compared with a noncharacter, which no font maps)."""
    if ch.isspace():
        return True
    font = _load_font(path, 16)
    return _glyph(font, ch) != _glyph(font, "\uffff")


def font_for(text: str, size: int):
    """A font of ``size`` pixels that has glyphs for every character of ``text``.

    Pillow's default font when it has them; else the first of ``$CLIPDISTILL_FONT`` and
    ``FONT_CANDIDATES`` that does (e.g. Noto CJK for Chinese or Japanese class names); else the
    one that misses the fewest, with a warning (once per set of characters) naming what to
    install: the missing characters are drawn as boxes.
    """
    chars = sorted(set(text))
    missing = [c for c in chars if not _has_glyph("", c)]
    if not missing:
        return _load_font("", size)
    best, best_missing = "", missing
    for path in _font_files():
        try:
            still = [c for c in missing if not _has_glyph(path, c)]
        except OSError:  # unreadable font file
            continue
        if not still:
            return _load_font(path, size)
        if len(still) < len(best_missing):
            best, best_missing = path, still
    key = "".join(best_missing)
    if key not in _warned_glyphs:
        _warned_glyphs.add(key)
        logging.getLogger(__name__).warning(
            f"No installed font has glyphs for {key[:20]!r} (drawn as boxes): install a CJK font "
            f"(Debian: apt-get install fonts-noto-cjk, or bash scripts/install_fonts.sh) or set "
            f"{FONT_ENV}=/path/to/font.ttf"
        )
    return _load_font(best, size)


def overlay_with_legend(
    image_rgb: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    colors: np.ndarray,
    alpha: float = 0.5,
    legend: bool = True,
    max_legend_items: int = 20,
) -> np.ndarray:
    """Blend the coloured ``label`` into the image and draw a legend of the classes present.

    The result has the image's size: the legend (a colour swatch and the name per class, largest
    area first, with the share of the image) sits in the top-left corner on a translucent panel,
    scaled to the image; classes beyond ``max_legend_items`` or beyond the image height are
    summarised as ``+N more``.

    Args:
        image_rgb: uint8 ``[H, W, 3]``. label: ``[H, W]`` class indices into ``class_names``.
        class_names: the vocabulary. colors: ``[K, 3]`` uint8 (``class_colors``).
        alpha: opacity of the class colours. legend: draw the legend.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    image = np.asarray(image_rgb)
    if image.shape[:2] != np.asarray(label).shape:
        raise ValueError(f"image {image.shape[:2]} and label {np.asarray(label).shape} differ")
    rgb, valid = colorize_label(label, colors)
    out = image.astype(np.float32)
    out[valid] = (1 - alpha) * out[valid] + alpha * rgb[valid].astype(np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if not legend:
        return out
    present = classes_present(label, len(class_names))
    if not present:
        return out
    h, w = out.shape[:2]
    total = float(h * w)
    size = int(np.clip(min(h, w) / 22, 9, 28))
    pad = max(2, size // 4)
    row_h = size + pad
    fit = max(1, (h - 2 * pad) // row_h)
    n_show = min(len(present), max_legend_items, fit)
    if n_show < len(present) and n_show > 1:
        n_show -= 1  # room for the "+N more" line
    rows = [(colors[i], f"{class_names[i]} {100 * c / total:.0f}%") for i, c in present[:n_show]]
    more = len(present) - n_show
    canvas = Image.fromarray(out).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    texts = [t for _, t in rows] + ([f"+{more} more"] if more else [])
    font = font_for("".join(texts), size)
    text_w = max(draw.textlength(t, font=font) for t in texts)
    panel_w = int(min(w, pad * 3 + size + text_w))
    panel_h = int(min(h, pad + row_h * len(texts)))
    draw.rectangle([0, 0, panel_w, panel_h], fill=(0, 0, 0, 150))
    y = pad
    for color, text in rows:
        c = tuple(int(v) for v in color)
        draw.rectangle(
            [pad, y, pad + size, y + size], fill=c + (255,), outline=(255, 255, 255, 255)
        )
        draw.text((2 * pad + size, y), text, font=font, fill=(255, 255, 255, 255))
        y += row_h
    if more:
        draw.text((pad, y), f"+{more} more", font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(canvas, layer).convert("RGB"))


# ------------------------------------------------------------------------------------------------
# comparisons: image | prediction | ground truth, upscaled, with a legend beside them
# ------------------------------------------------------------------------------------------------
def upscale_factor(hw: Tuple[int, int], min_side: int) -> int:
    """The integer factor that brings the shorter side of ``hw`` to at least ``min_side``
    (1 when it already is): small images are enlarged with nearest-neighbour sampling, so
    that each pixel stays one visible block."""
    short = max(1, min(int(hw[0]), int(hw[1])))
    return max(1, -(-int(min_side) // short))


def nearest_upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """``array`` (``[H, W, ...]``) enlarged ``factor`` times by repeating each pixel."""
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def drop_small_regions(label: np.ndarray, num_classes: int, min_area: int) -> np.ndarray:
    """``label`` (int64) with every connected region (8-connectivity) of a class smaller than
    ``min_area`` pixels set to -1 (unlabelled, not drawn)."""
    import cv2

    label = np.asarray(label).astype(np.int64)
    if min_area <= 1:
        return label
    out = label.copy()
    for c in np.unique(label):
        if not 0 <= c < num_classes:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats((label == c).astype(np.uint8), 8)
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
        if small.size:
            out[np.isin(comp, small)] = -1
    return out


def blend(image_rgb: np.ndarray, label: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """The image with the class colours of ``label`` blended in at opacity ``alpha``
    (unlabelled values are left as they are)."""
    rgb, valid = colorize_label(label, colors)
    out = np.asarray(image_rgb).astype(np.float32)
    out[valid] = (1 - alpha) * out[valid] + alpha * rgb[valid].astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _header(panel: np.ndarray, title: str, size: int) -> np.ndarray:
    """``panel`` with ``title`` written on a white strip above it (never over the image)."""
    font = font_for(title, size)
    strip = Image.new("RGB", (panel.shape[1], size + 6), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    text = title
    while text and draw.textlength(text, font=font) > panel.shape[1] - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.text((2, 2), text, font=font, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), panel], axis=0)


def legend_panel(
    entries: Sequence[Tuple[Sequence[int], str]], height: int, size: int = 14, min_width: int = 120
) -> np.ndarray:
    """A white panel of ``height`` pixels listing ``(colour, text)`` entries: a colour swatch and
    the text per line. Lines that do not fit are summarised as ``+N more``."""
    pad = max(2, size // 3)
    row_h = size + pad
    fit = max(1, (height - pad) // row_h)
    shown = list(entries)
    more = 0
    if len(shown) > fit:
        shown, more = shown[: fit - 1], len(shown) - (fit - 1)
    texts = [t for _, t in shown] + ([f"+{more} more"] if more else [])
    font = font_for("".join(texts) or "x", size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([probe.textlength(t, font=font) for t in texts] + [0])
    width = int(max(min_width, 3 * pad + size + text_w + pad))
    panel = Image.new("RGB", (width, max(height, row_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    y = pad
    for colour, text in shown:
        c = tuple(int(v) for v in list(colour)[:3])
        draw.rectangle([pad, y, pad + size, y + size], fill=c, outline=(0, 0, 0))
        draw.text((2 * pad + size, y), text, font=font, fill=(0, 0, 0))
        y += row_h
    if more:
        draw.text((pad, y), f"+{more} more", font=font, fill=(0, 0, 0))
    return np.asarray(panel)


_SHORT = {"prediction": "pred", "ground truth": "gt"}


def legend_entries(
    maps: Sequence[Tuple[str, np.ndarray]], class_names: Sequence[str], unseen: Sequence[str] = ()
) -> List[Tuple[int, str]]:
    """``[(class index, text)]`` for every class present in any of the named label maps
    (``("prediction", map)``, ``("ground truth", map)``), largest share first: the name,
    ``(unseen)`` for names in ``unseen``, and the class's share of each map it is in."""
    k = len(class_names)
    shares: dict = {}
    for what, m in maps:
        total = float(np.asarray(m).size)
        for c, n in classes_present(m, k):
            shares.setdefault(c, {})[what] = 100.0 * n / total
    unseen = set(unseen)
    out = []
    for c in sorted(shares, key=lambda c: (-max(shares[c].values()), c)):
        parts = [f"{_SHORT.get(w, w)} {shares[c][w]:.0f}%" for w, _ in maps if w in shares[c]]
        name = class_names[c] + (" (unseen)" if class_names[c] in unseen else "")
        out.append((c, f"{name}: {', '.join(parts)}"))
    return out


def compare_panels(
    image_rgb: np.ndarray,
    prediction: np.ndarray,
    class_names: Sequence[str],
    colors: np.ndarray,
    ground_truth: Optional[np.ndarray] = None,
    title: str = "",
    unseen: Sequence[str] = (),
    min_side: int = 256,
    alpha: float = 0.6,
    min_area: int = 0,
) -> np.ndarray:
    """``image | prediction | ground truth | legend`` as one RGB image.

    The masks are drawn as colours only (no text over them); the legend beside the panels lists
    every class present in the prediction or the ground truth (largest first), each with its
    colour swatch, its name, ``(unseen)`` for the names in ``unseen``, and its share of the
    prediction and of the ground truth. Images whose shorter side is below ``min_side`` are
    enlarged by an integer factor with nearest-neighbour sampling (``upscale_factor``).

    Args:
        image_rgb: uint8 ``[H, W, 3]``. prediction / ground_truth: ``[H, W]`` class indices
            (values outside ``[0, K)`` are not drawn: no prediction, the ignore label).
        class_names / colors: the vocabulary and its ``[K, 3]`` uint8 colours.
        min_area: connected regions smaller than this many pixels are not drawn.
    """
    image = np.asarray(image_rgb)
    k = len(class_names)
    maps = [("prediction", np.asarray(prediction))]
    if ground_truth is not None:
        maps.append(("ground truth", np.asarray(ground_truth)))
    for what, m in maps:
        if m.shape != image.shape[:2]:
            raise ValueError(f"{what} {m.shape} and image {image.shape[:2]} sizes differ")
    f = upscale_factor(image.shape[:2], min_side)
    size = int(np.clip(min(image.shape[:2]) * f / 18, 11, 22))
    panels = [_header(nearest_upscale(image, f), title or "image", size)]
    drawn = []
    for what, m in maps:
        m = drop_small_regions(m, k, min_area)
        drawn.append((what, m))
        panels.append(_header(nearest_upscale(blend(image, m, colors, alpha), f), what, size))
    entries = [(colors[c], text) for c, text in legend_entries(drawn, class_names, unseen)]
    height = panels[0].shape[0]
    panels.append(_header(legend_panel(entries, height - size - 6, size), "classes", size))
    return side_by_side(panels)
