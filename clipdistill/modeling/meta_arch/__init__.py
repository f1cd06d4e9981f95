from .seg_student import SegStudent

__all__ = ["SegStudent"]
