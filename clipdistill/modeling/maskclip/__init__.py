"""The training-free ``MaskCLIP`` segmenters (MaskCLIP, SCLIP, ClearCLIP, NACLIP, ...): a frozen
CLIP applied densely (``clipdistill.modeling.clip.dense``) over sliding windows
(``sliding_window``); its keys: ``config.add_maskclip_config``."""

from .config import add_maskclip_config
from .meta_arch import MaskCLIP
from .sliding_window import sliding_window_logits, window_boxes

__all__ = ["add_maskclip_config", "MaskCLIP", "sliding_window_logits", "window_boxes"]
