"""The logic of ``tools/demo.py``: expand the inputs, run the predictor in batches, write outputs.

Per image ``<stem>`` the demo writes into the output folder:

* ``<stem>_label.png``: indexed-colour (palette) PNG whose pixel values are the class indices
  (16-bit greyscale PNG for more than 255 classes);
* ``<stem>_overlay.png``: the image blended with the class colours, with a legend of the classes
  present;
* ``<stem>_scores.npz`` (``--save-scores``): ``scores`` float16 ``[K, H, W]`` per-class
  probabilities and ``class_names``;

and ``classes.json`` (the vocabulary, its colours and the index of each class). A video input
``<stem>.<ext>`` is segmented frame by frame into ``<stem>_overlay.mp4``.
"""

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..utils.visualize import label_map_image
from .predictor import SegPredictor, SegResult, read_image_rgb

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "DemoReport", "expand_inputs", "run_demo"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files named by ``inputs`` (files, glob patterns, folders: their images and videos, sorted).

    Returns:
        ``(files, missing)``: existing paths in order (duplicates dropped), and ``(argument,
        reason)`` for the arguments that name nothing (a missing file, a glob without match, a
        folder without images).
    """
    files, missing, seen = [], [], set()

    def add(p):
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for arg in inputs:
        if os.path.isdir(arg):
            found = sorted(
                os.path.join(arg, f)
                for f in os.listdir(arg)
                if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
                and os.path.isfile(os.path.join(arg, f))
            )
            if not found:
                missing.append((arg, "folder without images or videos"))
            for p in found:
                add(p)
        elif os.path.exists(arg):
            add(arg)
        elif glob.has_magic(arg):
            found = sorted(p for p in glob.glob(os.path.expanduser(arg)) if os.path.isfile(p))
            if not found:
                missing.append((arg, "no file matches the pattern"))
            for p in found:
                add(p)
        else:
            missing.append((arg, "no such file"))
    return files, missing


def _unique_stems(files: Sequence[str]) -> List[str]:
    """Output stems: the file stems, made unique (``a``, ``a_1``...) when two inputs share one."""
    stems, used = [], set()
    for f in files:
        base = os.path.splitext(os.path.basename(f))[0] or "input"
        stem, i = base, 1
        while stem in used:
            stem = f"{base}_{i}"
            i += 1
        used.add(stem)
        stems.append(stem)
    return stems


def _save_atomic(image: Image.Image, path: str) -> None:
    tmp = path + ".tmp" + os.path.splitext(path)[1]
    image.save(tmp)
    os.replace(tmp, path)


@dataclass
class DemoReport:
    """What a demo run did: written outputs per input, and the inputs that failed (with why)."""

    done: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.done) + len(self.failed)


def write_image_outputs(
    predictor: SegPredictor,
    image: np.ndarray,
    result: SegResult,
    output_dir: str,
    stem: str,
    alpha: float = 0.5,
) -> List[str]:
    """Write the label map, the overlay and (when ``result.scores`` is set) the score maps."""
    paths = []
    label_path = os.path.join(output_dir, f"{stem}_label.png")
    _save_atomic(label_map_image(result.label, predictor.colors), label_path)
    paths.append(label_path)
    overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
    _save_atomic(Image.fromarray(predictor.overlay(image, result, alpha)), overlay_path)
    paths.append(overlay_path)
    if result.scores is not None:
        scores_path = os.path.join(output_dir, f"{stem}_scores.npz")
        tmp = scores_path + ".tmp.npz"
        np.savez_compressed(
            tmp, scores=result.scores.astype(np.float16), class_names=np.array(result.class_names)
        )
        os.replace(tmp, scores_path)
        paths.append(scores_path)
    return paths


def write_vocabulary(predictor: SegPredictor, output_dir: str) -> str:
    path = os.path.join(output_dir, "classes.json")
    data = {
        "class_names": predictor.class_names,
        "colors": predictor.colors.tolist(),
        "label_png": "pixel value = index into class_names; 255 (65535 if > 255 classes) = none",
    }
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def _reason(error: Exception, path: str) -> str:
    """The error message without a leading ``<path>: ``."""
    msg = str(error)
    return msg[len(path) + 2 :] if msg.startswith(path + ": ") else msg


def _readable_images(files, stems, report: DemoReport) -> Iterator[tuple]:
    for path, stem in zip(files, stems):
        try:
            image = read_image_rgb(path)
        except (OSError, ValueError) as e:
            why = _reason(e, path)
            logger.error(f"Skipping {path}: {why}")
            report.failed.append((path, why))
            continue
        yield (path, stem), image


def segment_video(
    predictor: SegPredictor,
    path: str,
    output_path: str,
    batch_size: int = 1,
    alpha: float = 0.5,
    progress: bool = True,
) -> int:
    """Segment every frame of the video ``path`` and write the overlays as a video (same frame
    rate and size, mp4v codec). Returns the number of frames.

    Raises:
        OSError: the video cannot be opened or has no frames, or the output cannot be written.
    """
    import cv2
    from tqdm import tqdm

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"{path}: cannot open the video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    tmp = output_path + ".tmp" + os.path.splitext(output_path)[1]
    count = 0

    def frames():
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield None, np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB

    try:
        bar = tqdm(total=n_frames, desc=os.path.basename(path), unit="frame", disable=not progress)
        for _, image, result in predictor.predict_batches(frames(), batch_size):
            if writer is None:
                h, w = image.shape[:2]
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise OSError(f"{output_path}: cannot write a video (OpenCV mp4v)")
            writer.write(np.ascontiguousarray(predictor.overlay(image, result, alpha)[:, :, ::-1]))
            count += 1
            bar.update(1)
        bar.close()
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if count == 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"{path}: no frame could be read (not a video, or an empty one)")
    os.replace(tmp, output_path)
    return count


def run_demo(
    predictor: SegPredictor,
    inputs: Sequence[str],
    output_dir: str,
    batch_size: int = 1,
    save_scores: bool = False,
    alpha: float = 0.5,
    progress: bool = True,
) -> DemoReport:
    """Segment ``inputs`` (files, globs, folders; images and videos) into ``output_dir``.

    Unreadable or missing inputs are logged by name and skipped; the returned report lists them.
    """
    from tqdm import tqdm

    report = DemoReport()
    files, missing = expand_inputs(inputs)
    for arg, why in missing:
        logger.error(f"Skipping {arg}: {why}")
        report.failed.append((arg, why))
    if not files:
        return report
    os.makedirs(output_dir, exist_ok=True)
    report.outputs.append(write_vocabulary(predictor, output_dir))
    stems = _unique_stems(files)
    videos = [(f, s) for f, s in zip(files, stems) if is_video(f)]
    images = [(f, s) for f, s in zip(files, stems) if not is_video(f)]
    if images:
        stream = _readable_images([f for f, _ in images], [s for _, s in images], report)
        bar = tqdm(total=len(images), desc="segmenting", unit="image", disable=not progress)
        for (path, stem), image, result in predictor.predict_batches(
            stream, batch_size, scores=save_scores
        ):
            report.outputs += write_image_outputs(predictor, image, result, output_dir, stem, alpha)
            report.done.append(path)
            bar.update(1)
        bar.update(len(images) - bar.n)
        bar.close()
    for path, stem in videos:
        out = os.path.join(output_dir, f"{stem}_overlay.mp4")
        try:
            n = segment_video(predictor, path, out, batch_size, alpha, progress)
        except OSError as e:
            why = _reason(e, path)
            logger.error(f"Skipping {path}: {why}")
            report.failed.append((path, why))
            continue
        logger.info(f"{path}: {n} frames -> {out}")
        report.outputs.append(out)
        report.done.append(path)
    return report
