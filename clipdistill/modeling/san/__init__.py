"""SAN (Side Adapter Network): the parts of ``clipdistill.modeling.meta_arch.SAN``."""

from .classifier import LearnableBgOvClassifier
from .config import add_san_config
from .recognition import CLIPFeatureExtractor, RecognitionHead
from .side_adapter import ADAPTER_VITS, MLPMaskDecoder, SideAdapterNetwork, parse_fusion_map
from .vocabulary import OTHER, augment_vocabulary

__all__ = [
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
