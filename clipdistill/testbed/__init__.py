"""The open-vocabulary testbed (docs/TESTBED.md): the project's own small CLIPs trained on the
generated captioned world (``toy_clip``; their image towers in ``towers``) and the loss table that
measures which distillation losses carry its open vocabulary into a student (``loss_table``).

Importing it (``import clipdistill`` does) registers the testbed CLIPs with the shared CLIP layer,
so that any config can name them: their open_clip model configs (``model_configs/``:
``CNN-4-testbed``, ``ViT-8-testbed``), their image towers with timm (``towers``) and the
``"caption"`` prompt template set (the generated world's caption grammar).
"""

from pathlib import Path

from ..data.synthetic.world import caption_of
from ..modeling.clip.loader import register_model_configs
from ..modeling.clip.text import register_prompt_templates
from . import towers  # noqa: F401  (registers the testbed CLIPs' image towers with timm)

#: Folder of the testbed CLIPs' open_clip model configs.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def _caption_template(name: str) -> str:
    """The testbed world's caption of an image showing only ``name`` ("a red star.",
    "an empty background."); ``"a|an {}."`` for the placeholder (the cache key)."""
    if name == "{}":
        return "a|an {}."
    return caption_of([name])


register_model_configs(MODEL_CONFIG_DIR)
# the caption grammar of the generated testbed world, the testbed CLIP's training language
register_prompt_templates("caption", (_caption_template,))
