"""The R101c backbone of OVSeg's small model is detectron2's DeepLab ResNet
(``detectron2.projects.deeplab.build_resnet_deeplab_backbone``: three-convolution stem, multi-grid
res5); importing this module registers it, and ``check_deeplab_resnet_cfg`` validates its keys
with errors that name them (detectron2 only asserts)."""

import detectron2.projects.deeplab  # noqa: F401 (registers build_resnet_deeplab_backbone)

__all__ = ["check_deeplab_resnet_cfg"]


def check_deeplab_resnet_cfg(cfg) -> None:
    """Clear errors for the DeepLab ResNet keys before detectron2 builds the backbone (it only
    asserts); a no-op for other backbones."""
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_deeplab_backbone":
        return
    r = cfg.MODEL.RESNETS
    if r.STEM_TYPE not in ("basic", "deeplab"):
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE={r.STEM_TYPE!r}: use 'deeplab' or 'basic'")
    if r.RES4_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES4_DILATION={r.RES4_DILATION}: use 1 or 2")
    if len(r.RES5_MULTI_GRID) != 3:
        raise ValueError(
            f"MODEL.RESNETS.RES5_MULTI_GRID={list(r.RES5_MULTI_GRID)} needs one dilation "
            "multiplier per res5 block (3)"
        )
