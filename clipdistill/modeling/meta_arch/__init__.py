from .car import CaR
from .ovseg import OVSeg
from .san import SAN
from .seg_student import SegStudent
from .training_free import MaskCLIP

__all__ = ["SAN", "SegStudent", "MaskCLIP", "CaR", "OVSeg"]
