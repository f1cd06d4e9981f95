"""How a config names a CLIP: one spelling for every architecture.

Wherever a CLIP is configured (the student's teacher ``MODEL.CLIPDISTILL.TEACHER``, MaskCLIP's
``MODEL.MASKCLIP.CLIP``, SAN's ``MODEL.SAN.CLIP``, OVSeg's ``MODEL.OVSEG.CLIP``, CaR's
``MODEL.CAR.PROPOSAL_CLIP`` and ``MODEL.CAR.CLASSIFIER_CLIP``), its node holds

* ``NAME``: the open_clip model name (``open_clip.list_models()``: "ViT-B-16", "ViT-L-14-336",
  ...; clipdistill adds "ViT-T-16-toy", a tiny CLIP for tests, and the testbed's
  "CNN-4-testbed" and "ViT-8-testbed");
* ``WEIGHTS``: an open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), a local weights
  file, or "" for a seeded random initialisation (tests and toy configs);
* ``TEMPLATES``, where the architecture embeds class names with it: a prompt template set of
  ``clipdistill.modeling.clip.PROMPT_TEMPLATES`` ("openai" (80), "simple" (7), "single" ("a photo
  of a {}."), "vild" (14), "car" (CLIP-as-RNN's 15), "caption" (the testbed world's captions)).

``clipdistill.modeling.clip.load_open_clip`` loads it; its errors name these keys.
"""

from typing import Optional

from detectron2.config import CfgNode as CN

__all__ = ["add_clip_keys"]


def add_clip_keys(node: CN, *, name: str, weights: str, templates: Optional[str] = None) -> None:
    """Add ``NAME``, ``WEIGHTS`` (and ``TEMPLATES`` when given) with these defaults to ``node``."""
    node.NAME = name
    node.WEIGHTS = weights
    if templates is not None:
        node.TEMPLATES = templates
