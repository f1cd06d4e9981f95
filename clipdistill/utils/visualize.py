"""Drawing of label maps: detectron2's ``Visualizer`` with region names (``draw_sem_seg``, used by
``clipdistill.evaluation.visualize`` for ``tools/visualize_json_results.py``), indexed-colour
label maps and fast blended overlays with a legend (the deployment tools: ``tools/demo.py``,
``tools/web_demo.py``), and fonts for class names in any script. Nothing here reads a dataset.

Label maps hold contiguous class indices ``0..K-1``; any other value (negative "no prediction",
the ignore label 255/65535, ...) is treated as unlabelled and never drawn.
"""

import functools
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detectron2.utils.visualizer import ColorMode, Visualizer

from .colors import deterministic_colors

__all__ = [
    "draw_sem_seg",
    "side_by_side",
    "class_colors",
    "colorize_label",
    "label_map_image",
    "overlay_with_legend",
    "classes_present",
    "font_for",
    "titled",
]


# ------------------------------------------------------------------------------------------------
# detectron2 Visualizer (region labels written on the image)
# ------------------------------------------------------------------------------------------------
def _unlabelled_to(label: np.ndarray, num_classes: int) -> np.ndarray:
    """``label`` with every value outside ``[0, num_classes)`` replaced by ``num_classes``."""
    label = np.asarray(label).astype(np.int64)
    return np.where((label >= 0) & (label < num_classes), label, num_classes)


def draw_sem_seg(
    image_rgb: np.ndarray, label: np.ndarray, metadata, min_area: int = 0, alpha: float = 0.6
) -> np.ndarray:
    """Overlay ``label`` with the dataset's colours (``stuff_colors``) and class names.

    Values outside ``[0, len(stuff_classes))`` (no prediction, ignore label) are not drawn
    (detectron2's ``Visualizer`` would draw negative values with the last class's colour).
    Connected regions smaller than ``min_area`` pixels are not drawn. Returns RGB uint8.
    """
    num_classes = len(metadata.stuff_classes)
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    out = vis.draw_sem_seg(_unlabelled_to(label, num_classes), area_threshold=min_area, alpha=alpha)
    return out.get_image()


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


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` (same size) with ``title`` on a white box in its bottom-left corner."""
    h, w = panel.shape[:2]
    size = int(np.clip(min(h, w) / 14, 8, 20))
    font = font_for(title, size)
    im = Image.fromarray(np.ascontiguousarray(panel))
    draw = ImageDraw.Draw(im)
    tw = draw.textlength(title, font=font)
    draw.rectangle([0, h - size - 4, min(w, tw + 6), h], fill=(255, 255, 255))
    draw.text((3, h - size - 3), title, font=font, fill=(0, 0, 0))
    return np.asarray(im)
