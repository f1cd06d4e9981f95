"""Shared helpers for the tests: tiny offline configs and synthetic data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test never touches the network

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipdistill.engine.setup import get_clipdistill_cfg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

# offline, tiny: timm's test_efficientnet (82k params) + the tiny random CLIP teacher
TINY_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.TIMM.NAME",
    "test_efficientnet",
    "MODEL.TIMM.WEIGHTS",
    "",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    "16",
    "MODEL.CLIPDISTILL.TEACHER.NAME",
    "ViT-T-16-toy",
    "MODEL.CLIPDISTILL.TEACHER.WEIGHTS",
    "",
    "MODEL.CLIPDISTILL.TEACHER.TEMPLATES",
    "single",
    "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE",
    "64",
    # CaR (configs/car/* built offline by the config test): the tiny random CLIP in both roles
    "MODEL.CAR.PROPOSAL_CLIP.NAME",
    "ViT-T-16-toy",
    "MODEL.CAR.PROPOSAL_CLIP.WEIGHTS",
    "",
    "MODEL.CAR.CLASSIFIER_CLIP.NAME",
    "ViT-T-16-toy",
    "MODEL.CAR.CLASSIFIER_CLIP.WEIGHTS",
    "",
]

# OVSeg configs made cheap to build: the tiny random CLIP instead of ViT-L/14 or ViT-B/16 (the
# proposal generator keeps its published size); GroupNorm needs widths divisible by 32
TINY_OVSEG_OPTS = [
    "MODEL.OVSEG.CLIP.NAME",
    "ViT-T-16-toy",
    "MODEL.OVSEG.CLIP.WEIGHTS",
    "",
    "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM",
    "64",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    "32",
]


# SAN configs made tiny and offline: the toy CLIP (2 blocks) split after block 1, no weights
TINY_SAN_OPTS = [
    "MODEL.SAN.CLIP_MODEL_NAME",
    "ViT-T-16-toy",
    "MODEL.SAN.CLIP_PRETRAINED_NAME",
    "",
    "MODEL.SAN.FEATURE_LAST_LAYER_IDX",
    "1",
    "MODEL.SIDE_ADAPTER.FUSION_MAP",
    "['0->0', '1->1']",
    "MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS",
    "2",
]


def tiny_cfg(*opts, config_file=os.path.join(CONFIGS, "voc_toy.yaml")):
    """The toy config made tiny and offline, plus ``opts``."""
    return get_clipdistill_cfg(config_file, TINY_OPTS + list(opts))


def random_inputs(sizes, num_classes=20, ignore=255, seed=0):
    """Model inputs (uint8 images, int64 labels with some ignored pixels) of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        label = torch.randint(0, num_classes, (h, w), generator=g)
        label[:2] = ignore
        out.append(
            {
                "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                "sem_seg": label,
                "height": h,
                "width": w,
            }
        )
    return out


def write_image(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
