"""clipdistill: distill CLIP into small, fast open-vocabulary segmentation models (detectron2)."""
try:
    import torch  # noqa: F401
except ImportError:  # a deployment machine: only the torch-free runtime (deploy.runtime)
    torch = None

if torch is not None:
    from . import data  # noqa: F401  (registers datasets)
    from . import modeling  # noqa: F401  (registers backbone, heads, meta-architectures)
    from . import testbed  # noqa: F401  (registers the testbed CLIPs: CNN-4-testbed, ViT-8-testbed)
    from .config import add_clipdistill_config
    from .data import SemSegDatasetMapper
    from .modeling import CLIPTeacher, SegStudent

__version__ = "0.1.0"

__all__ = ["add_clipdistill_config", "SemSegDatasetMapper", "CLIPTeacher", "SegStudent"]
