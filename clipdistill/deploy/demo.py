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
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..utils.errors import OutputError
from ..utils.io import atomic_path, atomic_save_json, atomic_write, ensure_writable_dir
from ..utils.visualize import label_map_image
from .predictor import ScoreMaps, SegPredictor, SegResult, read_image_rgb

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
    with atomic_write(path) as f:
        image.save(f, format="PNG")


@dataclass
class DemoReport:
    """What a demo run did: written outputs per input, and the inputs that failed (with why)."""

    done: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    #: the error that stopped the run (an output could not be written: full disk, read-only
    #: folder); ``done`` lists what was finished before it
    stopped: Optional[OutputError] = None

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
    """Write the label map, the overlay and (when ``result.scores`` is set) the score maps.
    All or nothing: when one cannot be written, the others of this image are removed."""
    paths = []
    try:
        label_path = os.path.join(output_dir, f"{stem}_label.png")
        _save_atomic(label_map_image(result.label, predictor.colors), label_path)
        paths.append(label_path)
        overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
        _save_atomic(Image.fromarray(predictor.overlay(image, result, alpha)), overlay_path)
        paths.append(overlay_path)
        if result.scores is not None:
            scores_path = os.path.join(output_dir, f"{stem}_scores.npz")
            with atomic_write(scores_path) as f:
                write_scores_npz(f, result.scores, result.class_names)
            paths.append(scores_path)
    except BaseException:
        for p in paths:
            if os.path.exists(p):
                os.remove(p)
        raise
    return paths


def write_scores_npz(f, scores: ScoreMaps, class_names: Sequence[str]) -> None:
    """Write what ``np.savez_compressed(f, scores=float16 [K, H, W], class_names=...)`` writes,
    streaming the score maps class chunk by class chunk (memory: one chunk, not ``K x H x W``).
    Deflate level 1: the maps compress about as well as at numpy's default level, much faster."""
    import zipfile

    with zipfile.ZipFile(
        f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
    ) as zf:
        with zf.open("scores.npy", "w", force_zip64=True) as out:
            header = {"descr": "<f2", "fortran_order": False, "shape": tuple(scores.shape)}
            np.lib.format.write_array_header_1_0(out, header)
            for _, part in scores.chunks():
                out.write(np.ascontiguousarray(part, dtype="<f2").tobytes())
        with zf.open("class_names.npy", "w") as out:
            np.lib.format.write_array(out, np.array(list(class_names)))


def write_vocabulary(predictor: SegPredictor, output_dir: str) -> str:
    path = os.path.join(output_dir, "classes.json")
    data = {
        "class_names": predictor.class_names,
        "colors": predictor.colors.tolist(),
        "label_png": "pixel value = index into class_names; 255 (65535 if > 255 classes) = none",
    }
    atomic_save_json(path, data)
    return path


def _reason(error: Exception, path: str) -> str:
    """The error message without a leading ``<path>: ``."""
    msg = str(error)
    return msg[len(path) + 2 :] if msg.startswith(path + ": ") else msg


def _readable_images(predictor, files, stems, report: DemoReport) -> Iterator[tuple]:
    """The images that can be read and that the model can take (others skipped, named)."""
    for path, stem in zip(files, stems):
        try:
            image = read_image_rgb(path)
        except (OSError, ValueError) as e:
            why = _reason(e, path)
            logger.error(f"Skipping {path}: {why}")
            report.failed.append((path, why))
            continue
        problem = predictor.input_problem(image)
        if problem:
            logger.warning(f"Skipping {path}: {problem}")
            report.failed.append((path, problem))
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
    count = 0

    def frames():
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield None, np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB

    try:
        # the container is picked from the extension: the temporary name keeps it
        with atomic_path(output_path, keep_extension=True) as tmp:
            writer = None
            try:
                bar = tqdm(
                    total=n_frames, desc=os.path.basename(path), unit="frame", disable=not progress
                )
                for _, image, result in predictor.predict_batches(frames(), batch_size):
                    if writer is None:
                        h, w = image.shape[:2]
                        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                        writer = cv2.VideoWriter(tmp, fourcc, fps, (w, h))
                        if not writer.isOpened():
                            raise OutputError(
                                0, f"cannot write {output_path}: OpenCV's mp4v writer failed"
                            )
                    overlay = predictor.overlay(image, result, alpha)
                    writer.write(np.ascontiguousarray(overlay[:, :, ::-1]))
                    count += 1
                    bar.update(1)
                bar.close()
            finally:
                if writer is not None:
                    writer.release()
            if count == 0:
                raise _NoFrames()
    except _NoFrames:
        raise OSError(f"{path}: no frame could be read (not a video, or an empty one)") from None
    finally:
        cap.release()
    return count


class _NoFrames(Exception):
    pass


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
    An output that cannot be written (full disk...) stops the run: ``report.stopped`` holds the
    error, ``report.done`` what was finished; no partial output is left.

    Raises:
        OutputError: ``output_dir`` cannot be created or written.
    """
    report = DemoReport()
    files, missing = expand_inputs(inputs)
    for arg, why in missing:
        logger.error(f"Skipping {arg}: {why}")
        report.failed.append((arg, why))
    if not files:
        return report
    ensure_writable_dir(output_dir, "output folder")
    try:
        report.outputs.append(write_vocabulary(predictor, output_dir))
        _segment_all(predictor, files, output_dir, batch_size, save_scores, alpha, progress, report)
    except OutputError as e:  # full disk, read-only folder: every later write would fail too
        logger.error(f"Stopped: {e}")
        report.stopped = e
    return report


def _segment_all(predictor, files, output_dir, batch_size, save_scores, alpha, progress, report):
    from tqdm import tqdm

    stems = _unique_stems(files)
    videos = [(f, s) for f, s in zip(files, stems) if is_video(f)]
    images = [(f, s) for f, s in zip(files, stems) if not is_video(f)]
    if images:
        stream = _readable_images(
            predictor, [f for f, _ in images], [s for _, s in images], report
        )
        bar = tqdm(total=len(images), desc="segmenting", unit="image", disable=not progress)
        try:
            for (path, stem), image, result in predictor.predict_batches(
                stream, batch_size, scores=save_scores
            ):
                report.outputs += write_image_outputs(
                    predictor, image, result, output_dir, stem, alpha
                )
                report.done.append(path)
                bar.update(1)
            bar.update(len(images) - bar.n)
        finally:
            bar.close()
    for path, stem in videos:
        out = os.path.join(output_dir, f"{stem}_overlay.mp4")
        try:
            n = segment_video(predictor, path, out, batch_size, alpha, progress)
        except OutputError:
            raise
        except OSError as e:
            why = _reason(e, path)
            logger.error(f"Skipping {path}: {why}")
            report.failed.append((path, why))
            continue
        logger.info(f"{path}: {n} frames -> {out}")
        report.outputs.append(out)
        report.done.append(path)
