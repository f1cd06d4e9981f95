"""Configuration keys of CLIP-as-RNN (``MODEL.CAR.*``, ``add_car_config``).

Defaults are the official code's constructor defaults; the per-dataset values of the official
configs are in ``configs/car/*.yaml``. docs/CAR.md explains every key.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_car_config", "CAR_BACKGROUND_QUERIES"]

#: the background queries of the official configs
CAR_BACKGROUND_QUERIES = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river",
    "sea", "railway", "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road",
    "rock", "street", "valley", "bridge",
)  # fmt: skip


def add_car_config(cfg: CN) -> None:
    """Add ``MODEL.CAR`` (CLIP-as-RNN, ``clipdistill/modeling/car``) to ``cfg`` in place."""
    cfg.MODEL.CAR = CN()
    # ---- the two frozen CLIPs (open_clip names; weights: pretrained tag, local file, or ""
    # for a seeded random initialisation) ----
    cfg.MODEL.CAR.PROPOSAL_CLIP = CN()
    cfg.MODEL.CAR.PROPOSAL_CLIP.NAME = "ViT-B-16"  # mask proposals (Grad-CAM + CLIP-ES)
    cfg.MODEL.CAR.PROPOSAL_CLIP.WEIGHTS = "openai"
    cfg.MODEL.CAR.CLASSIFIER_CLIP = CN()
    cfg.MODEL.CAR.CLASSIFIER_CLIP.NAME = "ViT-L-14"  # mask classification on prompted images
    cfg.MODEL.CAR.CLASSIFIER_CLIP.WEIGHTS = "openai"
    # Build both CLIPs with QuickGELU, the activation of OpenAI's CLIPs (the official code loads
    # OpenAI's models; random initialisations then have the same structure).
    cfg.MODEL.CAR.FORCE_QUICK_GELU = True

    # ---- thresholds (official names: mask_threshold, confidence_threshold, clipes_threshold) ----
    cfg.MODEL.CAR.MASK_THRESHOLD = 0.5  # eta: a proposal above it is the visual prompt's mask
    cfg.MODEL.CAR.CONFIDENCE_THRESHOLD = 0.45  # theta: a text scoring at most this is removed
    cfg.MODEL.CAR.CLIPES_THRESHOLD = 0.4  # lambda: box threshold of the CLIP-ES refinement
    # Attention maps (last blocks) averaged by the CLIP-ES refinement.
    cfg.MODEL.CAR.ATTENTION_LAYERS = 8

    # ---- texts ----
    # Classifier templates: a set of PROMPT_TEMPLATES (modeling/clip/text.py); "car": the
    # official 15 ("a clean origami {}." + ViLD's 14).
    cfg.MODEL.CAR.CLASSIFIER_TEMPLATES = "car"
    # Template of the background queries and (from step 2 on) of the Grad-CAM texts.
    cfg.MODEL.CAR.CAM_TEMPLATE = "a clean origami {}."
    # Background queries: compete in the Grad-CAM softmax, never segmented (official bg_cls).
    cfg.MODEL.CAR.BACKGROUND_QUERIES = list(CAR_BACKGROUND_QUERIES)
    # Vocabulary names that are not queried: pixels no mask claims get this class (VOC-21's
    # "background", PC-60's). Without one in the vocabulary, such pixels take the class of the
    # highest refined CAM among the kept masks (docs/CAR.md, "Protocol").
    cfg.MODEL.CAR.BACKGROUND_CLASSES = ["background"]
    # Vocabulary names segmented in a second, "stuff" pass (Context/ADE configs): there the
    # thing names are the background queries; stuff is painted first, things over it.
    cfg.MODEL.CAR.STUFF_CLASSES = []
    # "name:what CLIP reads" renames, e.g. "bird:bird avian" (the official VOC names).
    cfg.MODEL.CAR.CLASS_NAME_MAP = []

    # ---- visual prompts (blur, gray, black, circle, rectangle, contour; applied in this order)
    cfg.MODEL.CAR.VISUAL_PROMPTS = ["circle"]
    cfg.MODEL.CAR.STUFF_VISUAL_PROMPTS = ["blur", "gray"]  # the stuff pass's prompts

    # ---- DenseCRF post-processing (pydensecrf2); off: the refined CAMs are the masks ----
    cfg.MODEL.CAR.CRF = CN()
    cfg.MODEL.CAR.CRF.ENABLED = True
    cfg.MODEL.CAR.CRF.ITERATIONS = 10  # mean-field iterations
    cfg.MODEL.CAR.CRF.POS_XY_STD = 1.0  # Gaussian kernel: spatial std (pixels)
    cfg.MODEL.CAR.CRF.POS_W = 3.0  # Gaussian kernel: weight
    cfg.MODEL.CAR.CRF.BI_XY_STD = 67.0  # bilateral kernel: spatial std (pixels)
    cfg.MODEL.CAR.CRF.BI_RGB_STD = 3.0  # bilateral kernel: colour std
    cfg.MODEL.CAR.CRF.BI_W = 4.0  # bilateral kernel: weight
    cfg.MODEL.CAR.BG_FACTOR = 1.0  # background unary (1 - max cam) ** BG_FACTOR, thing pass
    cfg.MODEL.CAR.STUFF_BG_FACTOR = 1.0  # the same in the stuff pass
    # A mask pixel is painted when its (CRF or CAM) value exceeds this (official: 0.5).
    cfg.MODEL.CAR.PAINT_THRESHOLD = 0.5

    # ---- official behaviours that look like bugs: True/official values reproduce the
    # official code (and its published numbers); docs/CAR.md measures each alternative ----
    # Classify from the class token after ALL blocks (official: after all but the last).
    cfg.MODEL.CAR.CLASSIFIER_ALL_BLOCKS = False
    # From step 2 on, the Grad-CAM text is CAM_TEMPLATE filled with the name (official);
    # False keeps the bare name at every step, as at step 1.
    cfg.MODEL.CAR.TEMPLATED_CAM_TEXT = True
    # The CRF's bilateral image: "official" (BGR minus the mean, cast to uint8 with wrap-around)
    # or "rgb" (the image itself).
    cfg.MODEL.CAR.CRF.IMAGE = "official"
    # One CRF mask per survivor; False reproduces the official one-hot encoding that drops the
    # trailing masks which win no pixel.
    cfg.MODEL.CAR.CRF.KEEP_ALL_MASKS = False
    # The "gray" prompt's conversion: "bgr2gray" (official, on RGB data) or "rgb2gray".
    cfg.MODEL.CAR.GRAY_CONVERSION = "bgr2gray"
    # Round the resampled positional embeddings through float16 (official).
    cfg.MODEL.CAR.ROUND_POS_EMBED_FP16 = True

    # ---- speed (no effect on outputs) ----
    cfg.MODEL.CAR.CAM_BATCH_SIZE = 8  # texts per batched Grad-CAM backward pass
