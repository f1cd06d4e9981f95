"""DenseCRF post-processing of CaR's masks, with ``pydensecrf`` (PyPI: ``pydensecrf2``).

``pydensecrf2`` is the maintained release of Lucas Beyer's Python binding of Philipp
Krähenbühl's fully-connected CRF, the package the official CaR code uses (same module name
``pydensecrf``, same API, same C++ code), so CRF outputs can be compared exactly.

The joint CRF of the official semantic mode: the unary is ``-log`` of
``[(1 - max_k cam_k) ** bg_factor, cam_1, ..., cam_K]`` (clipped at 1e-5 by
``unary_from_softmax``), a Gaussian pairwise term (sxy 1, compat 3) and a bilateral one
(sxy 67, srgb 3, compat 4) on the image, 10 mean-field iterations; the label of a pixel is the
arg-max, and mask k is ``label == k + 1``.
"""

import numpy as np

__all__ = ["dense_crf_masks", "crf_image"]

#: the BGR mean the official code subtracts from the image it gives the CRF
_MEAN_BGR = (104.008, 116.669, 122.675)


def _densecrf():
    try:
        from pydensecrf import densecrf, utils
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MODEL.CAR.CRF.ENABLED is True but the DenseCRF package is missing: "
            "`pip install pydensecrf2` (it builds from source: needs a C++ compiler), or set "
            "MODEL.CAR.CRF.ENABLED False."
        ) from e
    return densecrf, utils


def crf_image(image: np.ndarray, official: bool = True) -> np.ndarray:
    """The image the bilateral term sees.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        official: reproduce the official input: RGB -> BGR, minus the BGR mean in float32, then
            cast to uint8, so that negative values wrap around (e.g. -5 -> 251). ``False`` gives
            the RGB image itself.

    Returns:
        ``[H, W, 3]`` uint8, C-contiguous.
    """
    if not official:
        return np.ascontiguousarray(image, dtype=np.uint8)
    x = np.array(image).astype(np.float32)[:, :, ::-1]
    x -= _MEAN_BGR
    with np.errstate(invalid="ignore"):  # negative float -> uint8 is the official wrap-around
        x = x.astype(np.uint8)
    return np.ascontiguousarray(x)


def dense_crf_masks(
    image: np.ndarray,
    cams: np.ndarray,
    *,
    bg_factor: float = 1.0,
    keep_all_masks: bool = False,
    iterations: int = 10,
    pos_xy_std: float = 1,
    pos_w: float = 3,
    bi_xy_std: float = 67,
    bi_rgb_std: float = 3,
    bi_w: float = 4,
) -> np.ndarray:
    """Joint DenseCRF over ``cams`` plus a background channel.

    Args:
        image: ``[H, W, 3]`` uint8 image for the bilateral term (see ``crf_image``).
        cams: ``[K, H, W]`` float32 maps in [0, 1].
        bg_factor: exponent of the background score ``1 - max_k cam_k``.
        keep_all_masks: return K masks. ``False`` reproduces the official one-hot encoding
            without a class count, which returns only ``max(label)`` masks: trailing masks
            that win no pixel are dropped (the caller then pairs masks and classes by position).
        iterations, pos_xy_std, pos_w, bi_xy_std, bi_rgb_std, bi_w: CRF parameters.

    Returns:
        ``[K', H, W]`` float32 0/1 masks, ``K' = K`` or ``max(label)``.
    """
    densecrf, utils = _densecrf()
    k, h, w = cams.shape
    bg = np.power(1 - np.max(cams, axis=0, keepdims=True), bg_factor)
    prob = np.concatenate((bg, cams), axis=0)
    unary = np.ascontiguousarray(utils.unary_from_softmax(prob))
    crf = densecrf.DenseCRF2D(w, h, k + 1)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(
        sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=bi_w
    )
    q = np.array(crf.inference(iterations)).reshape((k + 1, h, w))
    label = np.argmax(q, axis=0)
    count = k if keep_all_masks else int(label.max())
    return (label[None] == np.arange(1, count + 1)[:, None, None]).astype(np.float32)
