from .heads import ClosedSetHead, TextEmbeddingHead, build_student_head

__all__ = ["TextEmbeddingHead", "ClosedSetHead", "build_student_head"]
