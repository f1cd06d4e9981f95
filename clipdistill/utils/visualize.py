"""Rendering of semantic-segmentation results.

Used by ``tools/visualize_json_results.py`` (predictions of ``SemSegEvaluator`` next to the ground
truth, drawn with detectron2's ``Visualizer``) and by the deployment tools (``tools/demo.py``,
``tools/web_demo.py``: indexed-colour label maps, fast blended overlays with a legend).

Label maps hold contiguous class indices ``0..K-1``; any other value (negative "no prediction",
the ignore label 255/65535, ...) is treated as unlabelled and never drawn.
"""

import functools
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw, ImageFont

from detectron2.utils.visualizer import ColorMode, Visualizer

from .errors import ConfigError, ConfigKeyError, DataError
from .io import atomic_write, ensure_writable_dir

__all__ = [
    "load_sem_seg_predictions",
    "draw_sem_seg",
    "side_by_side",
    "class_colors",
    "colorize_label",
    "label_map_image",
    "overlay_with_legend",
    "classes_present",
    "render_prediction_file",
    "font_for",
]


# ------------------------------------------------------------------------------------------------
# sem_seg_predictions.json
# ------------------------------------------------------------------------------------------------
def load_sem_seg_predictions(
    json_path: str, id_to_contiguous: Optional[Dict[int, int]] = None, fill: int = -1
) -> Dict[str, np.ndarray]:
    """Read ``sem_seg_predictions.json`` written by ``SemSegEvaluator`` into label maps.

    ``SemSegEvaluator`` writes one record per (image, class): ``file_name``, ``category_id`` and an
    RLE ``segmentation``. The ``category_id`` is the *dataset* id when the dataset's metadata has
    ``stuff_dataset_id_to_contiguous_id`` (COCO-Stuff: 1..182 with gaps), else the contiguous
    index itself.

    Args:
        json_path: the file.
        id_to_contiguous: the dataset's ``stuff_dataset_id_to_contiguous_id`` (None: the ids in
            the file are contiguous indices). JSON round trips may turn its keys into strings;
            both are accepted.
        fill: value of pixels that no record covers.

    Returns:
        dict: ``file_name -> int64 [H, W]`` map of contiguous class indices, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a list of records, no records, malformed records, or an id that
            the mapping does not know (the predictions belong to another dataset).
    """
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"Predictions file {json_path} does not exist")
    with open(json_path, "rb") as f:
        data = f.read()
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"Predictions file {json_path} is not valid JSON: {e}") from e
    if not isinstance(records, list):
        raise DataError(
            f"Predictions file {json_path} holds a {type(records).__name__}, not the list of "
            f"records that SemSegEvaluator writes"
        )
    if not records:
        raise DataError(
            f"Predictions file {json_path} holds no predictions (the evaluation saw no images?)"
        )
    mapping = None
    if id_to_contiguous is not None:
        mapping = {int(k): int(v) for k, v in id_to_contiguous.items()}
    by_file = defaultdict(list)
    index = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"file_name", "category_id", "segmentation"} <= set(r):
            raise DataError(
                f"{json_path}: record {i} is not a SemSegEvaluator prediction (needs file_name, "
                f"category_id, segmentation): {str(r)[:200]}"
            )
        by_file[r["file_name"]].append(r)
        index[id(r)] = i
    out = {}
    for file_name, recs in by_file.items():
        label = None
        for r in recs:
            try:
                m = mask_util.decode(r["segmentation"]).astype(bool)
                cid = int(r["category_id"])
                if m.ndim != 2:
                    raise ValueError(f"decoded mask has shape {m.shape}")
            except Exception as e:  # pycocotools raises several types for damaged RLE
                raise DataError(
                    f"{json_path}: record {index[id(r)]} (file_name {file_name}) has a damaged "
                    f"segmentation or category_id ({type(e).__name__}: {e})"
                ) from e
            if label is None:
                label = np.full(m.shape, fill, dtype=np.int64)
            elif m.shape != label.shape:
                raise DataError(
                    f"{json_path}: masks of {file_name} have different sizes {m.shape} and "
                    f"{label.shape}"
                )
            if mapping is not None:
                if cid not in mapping:
                    raise DataError(
                        f"{json_path}: category_id {cid} of {file_name} is not in the dataset's "
                        f"stuff_dataset_id_to_contiguous_id (ids {min(mapping)}..{max(mapping)}); "
                        f"were these predictions made on another dataset?"
                    )
                cid = mapping[cid]
            label[m] = cid
        out[file_name] = label
    return out


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
    from clipdistill.data.datasets.common import deterministic_colors

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
# tools/visualize_json_results.py
# ------------------------------------------------------------------------------------------------
def _titled(panel: np.ndarray, title: str) -> np.ndarray:
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


def render_prediction_file(
    json_path: str,
    dataset_name: str,
    output_dir: str,
    limit: int = 0,
    min_area: int = 0,
    alpha: float = 0.6,
    progress: bool = True,
) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Render ``sem_seg_predictions.json`` of ``dataset_name`` as ``image | prediction | ground
    truth`` PNGs (one per image, named after the image) in ``output_dir``.

    Category ids are mapped back through the dataset's ``stuff_dataset_id_to_contiguous_id`` when
    it has one; colours and names come from its ``stuff_colors`` / ``stuff_classes``. An image
    whose path in the file does not exist is looked up in the dataset by its base name (e.g.
    predictions written on another machine); if that fails too it is skipped and reported.

    Args:
        limit: render at most this many images (0: all), in file-name order.
        min_area: connected regions smaller than this (pixels) are not drawn.

    Returns:
        ``(written PNG paths, [(image, reason)] of the skipped images)``.

    Raises:
        KeyError: the dataset is not registered. FileNotFoundError / ValueError: see
        ``load_sem_seg_predictions``.
    """
    from tqdm import tqdm

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from clipdistill.data import read_sem_seg_label

    if dataset_name not in DatasetCatalog.list():
        close = [n for n in DatasetCatalog.list() if n.split("_")[0] in dataset_name]
        raise ConfigKeyError(
            f"dataset {dataset_name!r} is not registered"
            + (f"; registered names like it: {sorted(close)[:10]}" if close else "")
        )
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("stuff_classes", None) is None:
        raise ConfigError(f"dataset {dataset_name!r} has no stuff_classes (not a sem_seg dataset?)")
    preds = load_sem_seg_predictions(json_path, meta.get("stuff_dataset_id_to_contiguous_id", None))
    records = DatasetCatalog.get(dataset_name)
    gt_files = {d["file_name"]: d.get("sem_seg_file_name") for d in records}
    by_base = {os.path.basename(d["file_name"]): d["file_name"] for d in records}
    items = sorted(preds.items())
    if limit > 0:
        items = items[:limit]
    ensure_writable_dir(output_dir, "--output folder")
    written, failed = [], []
    for file_name, pred in tqdm(items, desc="rendering", unit="image", disable=not progress):
        image_path = file_name
        if not os.path.isfile(image_path):
            image_path = by_base.get(os.path.basename(file_name), file_name)
        if not os.path.isfile(image_path):
            failed.append((file_name, "image file is missing"))
            continue
        try:
            with Image.open(image_path) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as e:
            failed.append((file_name, f"unreadable image ({type(e).__name__}: {e})"))
            continue
        if image.shape[:2] != pred.shape:
            failed.append(
                (file_name, f"prediction {pred.shape} and image {image.shape[:2]} sizes differ")
            )
            continue
        panels = [
            _titled(image, os.path.basename(file_name)),
            _titled(draw_sem_seg(image, pred, meta, min_area, alpha), "prediction"),
        ]
        gt_path = gt_files.get(image_path) or gt_files.get(file_name)
        if gt_path and os.path.isfile(gt_path):
            gt = read_sem_seg_label(gt_path)
            if gt.shape == pred.shape:
                panels.append(
                    _titled(draw_sem_seg(image, gt, meta, min_area, alpha), "ground truth")
                )
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(file_name))[0] + ".png")
        with atomic_write(out) as f:
            Image.fromarray(side_by_side(panels)).save(f, format="PNG")
        written.append(out)
    return written, failed
