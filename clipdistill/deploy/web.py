"""The web demo (Gradio): upload an image, type class names, see the overlay and its legend.

``build_app(predictor)`` returns the ``gradio.Blocks`` app; ``launch(app, host, port)`` serves it
(``tools/web_demo.py`` does both). Bad input (no image, an unreadable image, empty or duplicated
class names) is answered with an error message on the page, never a stack trace.

Limits: an upload larger than ``max_upload_bytes`` is refused by the server (HTTP 413, Gradio's
``max_file_size``) before it is stored; an image with more than ``max_pixels`` pixels is refused
from its header, before it is decoded, with a message on the page (a 12000x12000 PNG is 140 kB
on disk but 430 MB decoded). Uploads are stored only in ``private_upload_folder()``, a temporary
folder removed when the server stops (also on SIGTERM).

Element ids (stable, used by the browser test): ``#input-image``, ``#class-names``,
``#segment-button``, ``#overlay``, ``#legend``, ``#status``.
"""

import contextlib
import html
import logging
import os
import signal
import tempfile
import threading
import warnings
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from ..modeling.clip.text import check_class_names
from ..utils.visualize import (
    class_colors,
    classes_present,
    nearest_upscale,
    overlay_with_legend,
    upscale_factor,
)
from .predictor import SegPredictor, SegResult, parse_class_names, read_image_rgb, to_rgb_uint8

__all__ = [
    "OnnxPredictor",
    "build_app",
    "launch",
    "segment_for_web",
    "legend_html",
    "image_from_upload",
    "check_pixel_count",
    "private_upload_folder",
    "MAX_UPLOAD_BYTES",
    "MAX_PIXELS",
]

logger = logging.getLogger(__name__)


class OnnxPredictor:
    """The web demo's predictor interface (``set_class_names``, ``__call__`` -> ``SegResult``,
    ``overlay``, ``colors``, ``class_names``) on an open-vocabulary export, run by the
    torch-free ``clipdistill.deploy.runtime.Segmenter`` (``student``: e.g. the int8 graph)."""

    def __init__(self, folder: str, class_names: Sequence[str], student: Optional[str] = None):
        from .runtime import Segmenter

        self.segmenter = Segmenter(folder, student=student)
        self.set_class_names(class_names)

    def set_class_names(self, class_names: Sequence[str]):
        self.class_names = check_class_names(class_names)
        self.segmenter.text_embeddings(self.class_names)  # computed once, cached
        self.colors = class_colors(len(self.class_names), None)
        return self.class_names

    def __call__(self, image_rgb: np.ndarray) -> SegResult:
        label = self.segmenter.segment(image_rgb, self.class_names).astype(np.int32)
        return SegResult(label=label, scores=None, class_names=list(self.class_names))

    def overlay(self, image_rgb: np.ndarray, result: SegResult, alpha: float = 0.5) -> np.ndarray:
        return overlay_with_legend(image_rgb, result.label, result.class_names, self.colors, alpha)


def legend_html(label: np.ndarray, class_names: Sequence[str], colors: np.ndarray) -> str:
    """An HTML legend of the classes present (swatch, name, share of the image)."""
    present = classes_present(label, len(class_names))
    total = float(label.size) or 1.0
    rows = []
    for i, count in present:
        r, g, b = (int(c) for c in colors[i])
        rows.append(
            f'<li class="legend-item" data-class="{html.escape(class_names[i])}">'
            f'<span style="display:inline-block;width:1em;height:1em;margin-right:0.4em;'
            f'vertical-align:middle;background:rgb({r},{g},{b});border:1px solid #888"></span>'
            f"{html.escape(class_names[i])} ({100 * count / total:.1f}%)</li>"
        )
    return '<ul style="list-style:none;padding-left:0">' + "".join(rows) + "</ul>"


def _error(message: str) -> str:
    return f"**Error:** {html.escape(message)}"


#: Uploads larger than this (longest side, pixels) are downscaled before segmentation: the model
#: returns per-class logits at the image's size, which for huge photos costs gigabytes.
MAX_SIDE = 2048
#: largest upload the server accepts (bytes; HTTP 413 above): a photo is a few MB
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: largest image decoded (width x height): 40 megapixels (e.g. 8000x5000) are 120 MB as RGB
MAX_PIXELS = 40_000_000


def check_pixel_count(path: str, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image of more than ``max_pixels`` pixels from its header, before decoding it.

    Raises:
        ValueError: too many pixels (names ``name``, the size and the limit).
    """
    from PIL import Image

    limit = f"the limit is {max_pixels:,} pixels (--max-pixels)"
    try:
        with warnings.catch_warnings():  # PIL's warning for > 89 Mpixels: refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError:  # PIL's own limit, far above ours
        raise ValueError(f"{name} has far too many pixels; {limit}") from None
    except Exception:
        return  # not an image: read_image_rgb says so
    if w * h > max_pixels:
        raise ValueError(f"{name} is {w}x{h} = {w * h:,} pixels; {limit}")


@contextlib.contextmanager
def private_upload_folder() -> Iterator[str]:
    """A temporary folder for Gradio's uploads (``GRADIO_TEMP_DIR``, inside the one the user set,
    else in the system's temporary folder), removed on exit, so that no upload outlives the
    server. SIGTERM is turned into ``KeyboardInterrupt`` meanwhile (Gradio then stops the server
    and the folder is removed). Enter it before Gradio builds the app."""
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
    old_handler = None
    if threading.current_thread() is threading.main_thread():

        def _interrupt(signum, frame):
            raise KeyboardInterrupt

        old_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="clipdistill-web-", dir=parent or None) as tmp:
            os.environ["GRADIO_TEMP_DIR"] = tmp
            try:
                yield tmp
            finally:
                if parent:
                    os.environ["GRADIO_TEMP_DIR"] = parent
                else:
                    os.environ.pop("GRADIO_TEMP_DIR", None)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _limit_size(image: np.ndarray, max_side: int) -> Tuple[np.ndarray, bool]:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, False
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)), True


def image_from_upload(
    payload, allowed_roots: Sequence[str] = (), max_pixels: int = MAX_PIXELS
) -> Optional[np.ndarray]:
    """The uploaded image as uint8 RGB, from what the browser sent for the image input.

    The app's event runs with ``preprocess=False`` so that an unreadable upload reaches this
    function (and is answered with a message) instead of failing inside Gradio's own decoding.

    Args:
        payload: None, an array, or Gradio's file payload (a dict with the server-side ``path`` of
            the upload and its ``orig_name``).
        allowed_roots: folders the upload must lie in (Gradio's upload/cache folders); other paths
            are refused, so a crafted request cannot make the server read arbitrary files.
        max_pixels: larger images are refused from their header, before decoding.

    Raises:
        ValueError: not a readable image, too many pixels, or a path outside ``allowed_roots``.
    """
    if payload is None:
        return payload
    if isinstance(payload, np.ndarray):
        h, w = payload.shape[:2]
        if h * w > max_pixels:
            raise ValueError(
                f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}"
            )
        return payload
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    name = (payload.get("orig_name") if isinstance(payload, dict) else None) or "the upload"
    if not path:
        raise ValueError("the upload has no file; upload the image again")
    real = os.path.realpath(path)
    roots = [os.path.realpath(r) for r in allowed_roots if r]
    if roots and not any(os.path.commonpath([real, r]) == r for r in roots):
        raise ValueError(f"{name} is not an uploaded file")
    check_pixel_count(real, name, max_pixels)
    try:
        return read_image_rgb(real)
    except OSError as e:
        cause = e.__cause__ or e
        detail = str(cause).replace(real, os.path.basename(real)).replace(path, name)
        raise ValueError(
            f"{name} is not a readable image ({type(cause).__name__}: {detail})"
        ) from e


#: a small image (the testbed's are 64 px) is shown enlarged to at least this shorter side
DISPLAY_MIN_SIDE = 384


def display_overlay(image: np.ndarray, label: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The page's overlay: the image blended with the label colours, without a legend drawn in
    it (the page lists the classes beside it), enlarged by an integer factor (nearest) when its
    shorter side is under ``DISPLAY_MIN_SIDE``, so that a small image stays readable (its longer
    side at most ``MAX_SIDE``)."""
    factor = upscale_factor(image.shape[:2], DISPLAY_MIN_SIDE)
    factor = max(1, min(factor, MAX_SIDE // max(image.shape[:2])))  # a strip stays bounded
    image, label = nearest_upscale(image, factor), nearest_upscale(label, factor)
    return overlay_with_legend(image, label, (), colors, legend=False)


def segment_for_web(
    predictor: SegPredictor,
    image,
    names_text: str,
    lock: Optional[threading.Lock] = None,
    allowed_roots: Sequence[str] = (),
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> Tuple[Optional[np.ndarray], str, str]:
    """The app's handler: ``(overlay or None, legend HTML, status markdown)``; never raises.

    ``image``: an array or Gradio's upload payload (see ``image_from_upload``)."""
    try:
        image = image_from_upload(image, allowed_roots, max_pixels)
    except ValueError as e:
        return None, "", _error(str(e))
    if image is None:
        return None, "", _error("upload an image first.")
    try:
        names = parse_class_names(names_text)
        image = to_rgb_uint8(image, "the uploaded image")
    except ValueError as e:
        return None, "", _error(str(e))
    h0, w0 = image.shape[:2]
    image, resized = _limit_size(image, max_side)
    lock = lock or threading.Lock()
    try:
        with lock:
            predictor.set_class_names(names)
            result = predictor(image)
            overlay = display_overlay(image, result.label, predictor.colors)
            legend = legend_html(result.label, result.class_names, predictor.colors)
    except ValueError as e:
        return None, "", _error(str(e))
    except Exception as e:  # the page gets a message; the log gets the traceback
        logger.exception("segmentation failed")
        return None, "", _error(f"segmentation failed ({type(e).__name__}: {e}).")
    h, w = image.shape[:2]
    n = len(classes_present(result.label, len(names)))
    status = f"Segmented a {w0}x{h0} image: {n} of {len(names)} classes present."
    if resized:
        status += f" (Downscaled to {w}x{h} first: the longest side is limited to {max_side}.)"
    return overlay, legend, status


def build_app(
    predictor: SegPredictor,
    title: str = "clipdistill open-vocabulary segmentation",
    max_pixels: int = MAX_PIXELS,
    examples: Sequence[str] = (),
):
    """The Gradio ``Blocks`` app around ``predictor`` (default names: its current vocabulary);
    images of more than ``max_pixels`` pixels are refused with a message. ``examples``: image
    files offered below the input, a click loads one (``deploy.predictor.example_images``: the
    config's first test images)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    lock = threading.Lock()
    default_names = ", ".join(predictor.class_names)

    from gradio.utils import get_upload_folder

    def segment(image, names_text):
        roots = [get_upload_folder(), getattr(image_input, "GRADIO_CACHE", "")]
        return segment_for_web(predictor, image, names_text, lock, roots, max_pixels=max_pixels)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {html.escape(title)}\nUpload an image and type class names separated by commas "
            "(words or phrases). The student segments the image into these classes."
        )
        with gr.Row():
            with gr.Column():
                image_input = gr.Image(
                    type="numpy",
                    image_mode="RGB",
                    label="Image",
                    sources=["upload"],
                    elem_id="input-image",
                )
                names = gr.Textbox(
                    value=default_names,
                    label="Class names (comma-separated)",
                    lines=2,
                    elem_id="class-names",
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                if examples:
                    gr.Examples(
                        examples=[[path] for path in examples],
                        inputs=[image_input],
                        label="Examples: click one, then Segment",
                        examples_per_page=len(examples),
                        elem_id="examples",
                    )
            with gr.Column():
                overlay = gr.Image(
                    type="numpy",
                    label="Overlay",
                    interactive=False,
                    format="png",
                    buttons=["download", "fullscreen"],
                    elem_id="overlay",
                )
                legend = gr.HTML(label="Legend", elem_id="legend")
                status = gr.Markdown(elem_id="status")
        # preprocess=False: the handler decodes the upload itself, so that a bad file gets a
        # message on the page (see image_from_upload)
        for event in (button.click, names.submit):
            event(
                segment,
                inputs=[image_input, names],
                outputs=[overlay, legend, status],
                preprocess=False,
            )
    app.queue(default_concurrency_limit=1)
    return app


def launch(
    app,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
):
    """Serve ``app`` on ``http://host:port`` (no share link, no analytics, system fonts); an
    upload of more than ``max_upload_bytes`` is answered with HTTP 413 and not stored."""
    import gradio as gr

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        show_error=True,
        inbrowser=False,
        prevent_thread_lock=not block,
        ssr_mode=False,
        theme=theme,
        footer_links=[],
        quiet=False,
        max_file_size=int(max_upload_bytes),
    )
