"""SAN (Side Adapter Network): the meta-architecture ``SAN`` (``meta_arch.py``), its parts and its
keys (``config.add_san_config``)."""

from .classifier import LearnableBgOvClassifier
from .config import add_san_config
from .meta_arch import SAN
from .recognition import CLIPFeatureExtractor, RecognitionHead
from .side_adapter import ADAPTER_VITS, MLPMaskDecoder, SideAdapterNetwork, parse_fusion_map
from .vocabulary import OTHER, augment_vocabulary

__all__ = [
    "SAN",
    "add_san_config",
    "ADAPTER_VITS",
    "CLIPFeatureExtractor",
    "LearnableBgOvClassifier",
    "MLPMaskDecoder",
    "OTHER",
    "RecognitionHead",
    "SideAdapterNetwork",
    "augment_vocabulary",
    "parse_fusion_map",
]
