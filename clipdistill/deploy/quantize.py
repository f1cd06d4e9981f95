"""int8 static quantisation of an open-vocabulary export (``student.onnx`` ->
``student.int8.onnx``) with ``onnxruntime.quantization``: QDQ format, per-channel int8 weights,
uint8 activations calibrated (MinMax by default) on images, each with the text embeddings of the
calibration vocabulary as the second input. The text head (everything computed from the ``text``
input) and the text tower (``text.onnx``) stay float. Torch-free
(numpy and onnxruntime); the images come from the caller (e.g. a registered dataset's training
images, ``tools/export_model.py --int8``).
"""

import os
from typing import Iterable, List, Optional, Sequence
import numpy as np

from .runtime import Segmenter, resize_shortest_edge

__all__ = ["ImageCalibrationReader", "quantize_student", "INT8_STUDENT"]

INT8_STUDENT = "student.int8.onnx"


def _calibration_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class ImageCalibrationReader(_calibration_reader_base()):
    """Feeds ``{"image": [1, 3, H, W], "text": [K, D]}`` for each RGB uint8 ``[H, W, 3]`` image,
    resized like the runtime (``min_size_test``/``max_size_test``), in the export's channel
    order."""

    def __init__(self, images: Iterable[np.ndarray], text: np.ndarray, meta: dict):
        self._images = iter(images)
        self.text = np.ascontiguousarray(text, dtype=np.float32)
        self.meta = meta
        self.count = 0

    def get_next(self) -> Optional[dict]:
        image = next(self._images, None)
        if image is None:
            return None
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        image = image[:, :, :3]
        h, w = image.shape[:2]
        nh, nw = resize_shortest_edge(
            h, w, self.meta.get("min_size_test"), self.meta.get("max_size_test")
        )
        if (nh, nw) != (h, w):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        if self.meta.get("input_format") == "BGR":
            image = image[:, :, ::-1]
        self.count += 1
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        return {"image": x, "text": self.text}


def _load_graph(path: str):
    import onnx

    return onnx.load(path).graph


def _nodes_of_types(path: str, op_types: Sequence[str]) -> List[str]:
    return [n.name for n in _load_graph(path).node if n.op_type in set(op_types)]


def _text_head_nodes(path: str) -> List[str]:
    """The nodes that read the ``text`` input or anything computed from it (the class-text
    product, logit scale and bias, upsampling, argmax): they stay float. Quantising them clips
    the logits to the range of the calibration vocabulary, and another vocabulary's logits fall
    outside it (measured on the tiny student: 2-11 % label agreement with fp32 when they were
    quantised)."""
    graph = _load_graph(path)
    tainted = {"text"}
    names = []
    for node in graph.node:  # ONNX nodes are topologically sorted
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


def quantize_student(
    folder: str,
    images: Iterable[np.ndarray],
    class_names: Optional[Sequence[str]] = None,
    output: str = INT8_STUDENT,
    per_channel: bool = True,
    exclude_op_types: Sequence[str] = (),
) -> str:
    """Write ``folder/output``: the int8 QDQ student calibrated on ``images`` with the text
    embeddings of ``class_names`` (default: the training vocabulary of ``deploy.json``).
    The text head (every node downstream of the ``text`` input) stays float;
    ``exclude_op_types``: further ONNX op types left in float.
    Returns its path."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    seg = Segmenter(folder, resize=False)
    names = list(class_names or seg.meta["train_vocabulary"])
    reader = ImageCalibrationReader(images, seg.text_embeddings(names), seg.meta)
    src = os.path.join(folder, seg.meta["student"])
    dst = os.path.join(folder, output)
    tmp = dst + ".tmp.onnx"
    pre = dst + ".pre.onnx"
    try:
        # onnxruntime's pre-processing (shape inference, basic graph optimisation): it removes
        # the exporter's Identity nodes between shared constants and the convolutions' biases.
        # Without it a bias is not an initializer, stays float, and onnxruntime cannot fuse the
        # convolution into QLinearConv: 22 of a ResNet-18-D student's 28 convolutions ran in
        # float between Dequantize/Quantize nodes, and int8 was slower than fp32.
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        exclude = _text_head_nodes(pre) + (
            _nodes_of_types(pre, exclude_op_types) if exclude_op_types else []
        )
        quantize_static(
            pre,
            tmp,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
        if reader.count == 0:
            raise ValueError("int8 calibration: no images were given")
        os.replace(tmp, dst)
    finally:
        for path in (tmp, pre):
            if os.path.exists(path):
                os.remove(path)
    return dst
