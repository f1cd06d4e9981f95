"""Any ``features_only`` timm model as a detectron2 ``Backbone`` (EfficientNet-B0 by default)."""

import logging
import os
from typing import Dict, Sequence

import timm
import torch

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

from ...utils.distributed import local_rank_zero_first
from ...utils.errors import ConfigError, DataError, ResourceError

__all__ = ["TimmBackbone", "build_timm_backbone", "levels_at_strides"]

logger = logging.getLogger(__name__)


def levels_at_strides(name: str, strides: Sequence[int] = (4, 8, 16, 32)) -> list:
    """The timm feature levels of model ``name`` at ``strides`` (its ``MODEL.TIMM.OUT_INDICES``
    for res2..res5): levels 1..4 for most CNNs (level 0 at stride 2), 0..3 for models whose
    first level is at stride 4 (RepViT, FastViT).

    Raises:
        ConfigError: ``name`` is not a timm model, or has no feature level at one of ``strides``.
    """
    if name not in timm.list_models():
        raise ConfigError(f"MODEL.TIMM.NAME={name!r} is not a timm model")
    reductions = timm.create_model(
        name, features_only=True, pretrained=False
    ).feature_info.reduction()
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ConfigError(
            f"MODEL.TIMM.NAME={name!r} has no feature level at stride {missing} "
            f"(its levels' strides: {reductions})"
        )
    return [reductions.index(s) for s in strides]


class TimmBackbone(Backbone):
    """Wrap ``timm.create_model(name, features_only=True)``; outputs are named by their stride,
    ``res{log2(stride)}`` as detectron2's ResNets (strides 4..32 = res2..res5: timm levels 1..4
    of most CNNs, whose level 0 is at stride 2; levels 0..3 of RepViT or FastViT).

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self,
        *,
        name: str,
        weights: str = "timm",
        out_indices: Sequence[int] = (1, 2, 3, 4),
        in_chans: int = 3,
    ):
        """
        Args:
            name (str): timm model name (``MODEL.TIMM.NAME``).
            weights (str): ``"timm"`` for timm's pretrained weights, a local checkpoint path, or
                ``""`` for random initialisation (``MODEL.TIMM.WEIGHTS``).
            out_indices (list[int]): timm feature levels to return (``MODEL.TIMM.OUT_INDICES``).
            in_chans (int): input channels.
        """
        super().__init__()
        if name not in timm.list_models():
            raise ConfigError(
                f"MODEL.TIMM.NAME={name!r} is not a timm model; e.g. efficientnet_b0, "
                f"mobilenetv3_large_100, resnet50 (see timm.list_models())"
            )
        kwargs = dict(features_only=True, out_indices=tuple(out_indices), in_chans=in_chans)
        if weights == "timm":
            try:
                self.model = local_rank_zero_first(
                    lambda: timm.create_model(name, pretrained=True, **kwargs)
                )
            except Exception as e:
                raise ResourceError(
                    f"Could not fetch timm's pretrained weights for MODEL.TIMM.NAME={name!r} "
                    f"(MODEL.TIMM.WEIGHTS='timm'): {type(e).__name__}: {e}\n"
                    f"Without network access, download the weights elsewhere and set "
                    f"MODEL.TIMM.WEIGHTS /path/to/{name}.safetensors (or .pth), or set "
                    f"MODEL.TIMM.WEIGHTS '' to train from random initialisation."
                ) from e
        elif weights:
            if not os.path.isfile(weights):
                raise FileNotFoundError(
                    f"MODEL.TIMM.WEIGHTS={weights!r}: no such file (expected a timm checkpoint "
                    f"for {name!r}, or 'timm' to download, or '' for random init)"
                )
            try:
                self.model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs
                )
            except Exception as e:  # a damaged file, or weights of another model
                raise DataError(
                    f"MODEL.TIMM.WEIGHTS={weights!r}: cannot load it as {name!r} weights "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                ) from e
        else:
            logger.info(f"TimmBackbone: {name} randomly initialised (MODEL.TIMM.WEIGHTS='')")
            try:
                self.model = timm.create_model(name, pretrained=False, **kwargs)
            except IndexError as e:  # a level the model does not have
                raise ConfigError(
                    f"MODEL.TIMM.OUT_INDICES={list(out_indices)}: {name!r} has no such feature "
                    f"level (its levels at strides 4..32: {levels_at_strides(name)})"
                ) from e
        info = self.model.feature_info
        self._out_features = [f"res{int(r).bit_length() - 1}" for r in info.reduction()]
        self._out_feature_channels = dict(zip(self._out_features, info.channels()))
        self._out_feature_strides = dict(zip(self._out_features, info.reduction()))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec = None):
        return {
            "name": cfg.MODEL.TIMM.NAME,
            "weights": cfg.MODEL.TIMM.WEIGHTS,
            "out_indices": list(cfg.MODEL.TIMM.OUT_INDICES),
            "in_chans": input_shape.channels if input_shape and input_shape.channels else 3,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(zip(self._out_features, self.model(x)))

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """``MODEL.BACKBONE.NAME: "build_timm_backbone"``."""
    return TimmBackbone(cfg, input_shape)
