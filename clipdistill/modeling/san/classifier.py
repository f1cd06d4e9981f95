"""SAN's open-vocabulary classifier: CLIP's (frozen) text tower and a learnable background.

The classifier of a vocabulary of K names is ``[T_1 .. T_K, bg]``, each row L2-normalised, where
``T_k`` is the prompt ensemble of name k (every template embedded and normalised, averaged,
normalised again) and ``bg`` the learned no-object embedding. The module owns the text tower's
parameters under open_clip's names (``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final``, ``text_projection``, ``logit_scale``) plus ``bg_embed`` and the
causal ``attn_mask`` (a persistent buffer, as in the published checkpoints). Only ``bg_embed``
is trainable; the module stays in eval mode.
"""

import logging
from collections import OrderedDict
from typing import Callable, List, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LearnableBgOvClassifier", "VILD_TEMPLATES", "TEMPLATE_SETS"]

logger = logging.getLogger(__name__)

#: the 14 prompt templates of ViLD (Gu et al., 2022), SAN's default template set
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def _imagenet_templates() -> Tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


#: template-set name -> function returning its templates ("{}" is the class name)
TEMPLATE_SETS = {
    "vild": lambda: VILD_TEMPLATES,
    "imagenet": _imagenet_templates,  # the 80 prompts of the CLIP paper
    "single": lambda: ("a photo of a {}.",),
}

_TEXT_PARTS = (
    "token_embedding",
    "positional_embedding",
    "transformer",
    "ln_final",
    "text_projection",
)


class LearnableBgOvClassifier(nn.Module):
    """Prompt-ensembled CLIP text classifier with a learned background row.

    Args:
        clip_model: an open_clip ``CLIP`` whose text tower is taken (not copied).
        tokenizer: open_clip tokenizer of that model.
        templates: prompt templates with one "{}".
        text_batch_size: prompts per forward pass of the text tower (a vocabulary of any size is
            embedded in chunks).
        cache_size: vocabularies whose embeddings are kept in memory.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable,
        templates: Sequence[str],
        text_batch_size: int = 256,
        cache_size: int = 8,
    ):
        super().__init__()
        missing = [p for p in _TEXT_PARTS if getattr(clip_model, p, None) is None]
        if missing or getattr(clip_model, "logit_bias", None) is not None:
            raise ValueError(
                f"SAN's classifier needs an open_clip CLIP with a causal text tower and no logit "
                f"bias; {type(clip_model).__name__} lacks "
                f"{missing or 'nothing but has a logit_bias'}"
            )
        if getattr(clip_model, "text_pool_type", "argmax") != "argmax":
            raise ValueError(
                f"SAN's classifier pools the end-of-text token (text_pool_type 'argmax'); "
                f"this CLIP "
                f"uses {clip_model.text_pool_type!r}"
            )
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"every prompt template needs exactly one '{{}}': {list(templates)}")
        # the text tower, under open_clip's names (registration order as in the published model)
        self.positional_embedding = clip_model.positional_embedding
        self.text_projection = clip_model.text_projection
        self.logit_scale = clip_model.logit_scale
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.ln_final = clip_model.ln_final
        self.register_buffer("attn_mask", clip_model.attn_mask.clone(), persistent=True)
        for p in self.parameters():
            p.requires_grad_(False)
        width = (
            self.text_projection.shape[-1]
            if isinstance(self.text_projection, torch.Tensor)
            else (self.text_projection.out_features)
        )
        self.bg_embed = nn.Parameter(torch.empty(1, width))
        nn.init.normal_(self.bg_embed, std=width**-0.5)
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.text_batch_size = text_batch_size
        self.cache_size = cache_size
        self._cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        super().train(False)

    def train(self, mode: bool = True):
        """The text tower has no train-time behaviour to switch: always eval mode."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.bg_embed.shape[-1]

    # ------------------------------------------------------------------------------ text
    def _signature(self) -> tuple:
        return tuple((id(t), t._version, t.device, t.dtype) for t in self._text_tensors())

    def _text_tensors(self):
        for name, t in self.named_parameters():
            if name != "bg_embed":
                yield t
        yield self.attn_mask

    @torch.no_grad()
    def encode_prompts(self, prompts: List[str]) -> torch.Tensor:
        """L2-normalised embeddings ``[P, D]`` of ``prompts``, ``text_batch_size`` at a time."""
        out = []
        for i in range(0, len(prompts), self.text_batch_size):
            tokens = self.tokenizer(prompts[i : i + self.text_batch_size]).to(self.bg_embed.device)
            out.append(self._encode_tokens(tokens))
        return torch.cat(out)

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding.to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = self.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled embeddings ``[K, D]`` (float32), cached per vocabulary until a
        text-tower weight changes (e.g. a checkpoint is loaded)."""
        names = tuple(class_names)
        key = (names, self._signature())
        emb = self._cache.get(key)
        if emb is not None:
            self._cache.move_to_end(key)
            return emb
        with torch.inference_mode(False):
            prompts = [t.format(n) for t in self.templates for n in names]
            feats = self.encode_prompts(prompts).view(len(self.templates), len(names), -1)
            emb = F.normalize(feats.mean(dim=0), dim=-1)
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """The classifier ``[K+1, D]``: the names' embeddings and the background, normalised and
        scaled by ``exp(logit_scale)`` (differentiable w.r.t. ``bg_embed``)."""
        text = self.text_embeddings(class_names).to(self.bg_embed.dtype)
        weight = F.normalize(torch.cat([text, self.bg_embed], dim=0), dim=-1)
        return self.logit_scale.exp() * weight


def build_tokenizer(model_name: str) -> Callable:
    """open_clip's tokenizer of ``model_name`` (no network for the OpenAI/CLIP BPE)."""
    return open_clip.get_tokenizer(model_name)
