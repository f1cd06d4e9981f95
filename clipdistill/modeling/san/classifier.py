"""SAN's open-vocabulary classifier: CLIP's (frozen) text tower and a learnable background.

The classifier of a vocabulary of K names is ``exp(logit_scale) * [T_1 .. T_K, bg]``, each row
L2-normalised, where ``T_k`` is the prompt ensemble of name k (every template embedded and
normalised, averaged, normalised again; the shared ``TextEncoder``, cached per vocabulary in
memory and on disk) and ``bg`` the learned no-object embedding. The module owns the text tower's
parameters under open_clip's names (``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final``, ``text_projection``, ``logit_scale``) plus ``bg_embed`` and the
causal ``attn_mask`` (a persistent buffer, as in the published checkpoints). Only ``bg_embed`` is
trainable; the module stays in eval mode.
"""

import logging
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.fingerprint import weights_identity
from ..clip.text import TextEncoder

__all__ = ["LearnableBgOvClassifier"]

logger = logging.getLogger(__name__)

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
        model_name: the open_clip model name (part of the text cache key).
        templates: a ``PROMPT_TEMPLATES`` name or a sequence of templates.
        identity: ``weights_identity`` of the text tower's weights; None: no disk cache.
        weights_file: the text weights will be loaded from this checkpoint after construction
            (``MODEL.WEIGHTS``): the disk cache, keyed by the file's identity, is used only once
            the weights have changed from the construction-time ones.
        text_batch_size: prompts per text-tower call (vocabularies of any size are chunked).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable,
        *,
        model_name: str,
        templates,
        identity: Optional[str],
        weights_file: str = "",
        text_batch_size: int = 256,
    ):
        super().__init__()
        missing = [p for p in _TEXT_PARTS if getattr(clip_model, p, None) is None]
        if missing or getattr(clip_model, "logit_bias", None) is not None:
            raise ValueError(
                f"SAN's classifier needs an open_clip CLIP with a causal text tower and no logit "
                f"bias; {type(clip_model).__name__} lacks {missing or 'nothing'}"
                + (
                    " but has a logit_bias"
                    if getattr(clip_model, "logit_bias", None) is not None
                    else ""
                )
            )
        if getattr(clip_model, "text_pool_type", "argmax") != "argmax":
            raise ValueError(
                f"SAN's classifier pools the end-of-text token (text_pool_type 'argmax'); this "
                f"CLIP uses {clip_model.text_pool_type!r}"
            )
        # the text tower, under open_clip's names
        self.positional_embedding = clip_model.positional_embedding
        self.text_projection = clip_model.text_projection
        self.logit_scale = clip_model.logit_scale
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.ln_final = clip_model.ln_final
        self.register_buffer("attn_mask", clip_model.attn_mask.clone(), persistent=True)
        for p in self.parameters():
            p.requires_grad_(False)
        proj = self.text_projection
        width = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]
        self.bg_embed = nn.Parameter(torch.empty(1, width))
        nn.init.normal_(self.bg_embed, std=width**-0.5)
        self.text_encoder = TextEncoder(
            self,
            tokenizer,
            model_name=model_name,
            identity=None if weights_file else identity,
            templates=templates,
            batch_size=text_batch_size,
        )
        self._weights_file = weights_file
        self._signature = self._text_signature()
        super().train(False)

    def train(self, mode: bool = True):
        """The text tower has no train-time behaviour: always eval mode."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.bg_embed.shape[-1]

    def _text_signature(self) -> tuple:
        tensors = [t for n, t in self.named_parameters() if n != "bg_embed"] + [self.attn_mask]
        return tuple((id(t), t._version, t.device, t.dtype) for t in tensors)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip's text embedding of ``tokens`` ``[N, 77]`` (end-of-text token pooled)."""
        dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding.to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = self.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if normalize else x

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled embeddings ``[K, D]`` (float32, also under autocast), cached per
        vocabulary; the in-memory cache is dropped whenever a text-tower weight changes (a
        checkpoint loaded)."""
        signature = self._text_signature()
        if signature != self._signature:
            self._signature = signature
            self.text_encoder.clear()
            if self._weights_file:  # the checkpoint's text weights are in: use the disk cache
                self.text_encoder.identity = weights_identity(self._weights_file)
                self._weights_file = ""
        # float32 even inside an AMP step: the embeddings are cached and reused at evaluation
        with torch.autocast(device_type=self.bg_embed.device.type, enabled=False):
            return self.text_encoder(class_names)

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """The classifier ``[K+1, D]``: the names' embeddings and the background, normalised and
        scaled by ``exp(logit_scale)`` (differentiable w.r.t. ``bg_embed``)."""
        text = self.text_embeddings(class_names).to(self.bg_embed.dtype)
        weight = F.normalize(torch.cat([text, self.bg_embed], dim=0), dim=-1)
        return self.logit_scale.exp() * weight
