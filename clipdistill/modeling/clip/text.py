"""Text side of CLIP for every architecture: prompt templates, class-name checks and the
``TextEncoder`` (prompt-ensembled class embeddings cached per vocabulary in memory and on disk)."""

import json
import logging
import os
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import open_clip
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from safetensors import safe_open
from safetensors.torch import save_file

from ...utils.errors import ConfigError
from ...utils.fingerprint import digest
from ...utils.io import atomic_path

__all__ = [
    "PROMPT_TEMPLATES",
    "VILD_TEMPLATES",
    "register_prompt_templates",
    "TextEncoder",
    "check_class_names",
    "template_strings",
]

logger = logging.getLogger(__name__)

Template = Union[str, Callable[[str], str]]


def _single_template(name: str) -> str:
    return f"a photo of a {name}."


#: The 14 prompt templates of ViLD (Gu et al., 2022), used by SAN and OVSeg.
VILD_TEMPLATES: Tuple[str, ...] = (
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

#: Prompt template sets by name; a template is a callable or a ``str.format`` string with ``{}``.
PROMPT_TEMPLATES: Dict[str, Tuple[Template, ...]] = {
    "openai": tuple(OPENAI_IMAGENET_TEMPLATES),  # the 80 prompts of the CLIP paper
    "simple": tuple(SIMPLE_IMAGENET_TEMPLATES),  # open_clip's 7-prompt subset
    "single": (_single_template,),
    "vild": VILD_TEMPLATES,  # ViLD's 14 (SAN, OVSeg)
    # CLIP-as-RNN's mask classifier: "a clean origami {}." and ViLD's 14
    "car": ("a clean origami {}.",) + VILD_TEMPLATES,
    # "caption", the testbed world's caption grammar, is added by clipdistill.testbed
}


def register_prompt_templates(name: str, templates: Sequence[Template]) -> None:
    """Add the template set ``name`` to ``PROMPT_TEMPLATES`` (replacing one of that name)."""
    if not templates:
        raise ValueError(f"prompt template set {name!r} is empty")
    PROMPT_TEMPLATES[name] = tuple(templates)


def template_strings(templates: Sequence[Template]) -> List[str]:
    """Each template as a string with ``{}`` for the name (what the cache key records)."""
    return [t if isinstance(t, str) else t("{}") for t in templates]


def check_class_names(class_names: Sequence[str]) -> List[str]:
    """Strip class names and reject an empty list, empty names and duplicates.

    The one validation of a vocabulary (every segmenter, the predictor, demo and web demo); its
    messages are meant for users.

    Raises:
        ValueError: naming the offending names.
    """
    if isinstance(class_names, str):
        raise ConfigError(
            f"class_names must be a sequence of names, not the string {class_names!r}."
        )
    raw = [str(n) for n in class_names]
    if not raw:
        raise ConfigError("no class names given: class_names is empty (give at least one name).")
    names = [n.strip() for n in raw]
    for i, n in enumerate(names):  # lone surrogates: bytes that were not UTF-8 (argv, a file)
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            shown = n.encode("utf-8", "backslashreplace").decode("utf-8")
            raise ConfigError(
                f"class name {i + 1} ({shown}) is not valid UTF-8 text (undecodable bytes, "
                "e.g. from a file or a command line in another encoding); give it in UTF-8"
            ) from None
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise ConfigError(
            f"empty class name at position {empty} "
            f"({[raw[i - 1] for i in empty]!r}); empty names are not allowed: {raw!r}"
        )
    seen, dups = set(), []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    if dups:
        raise ConfigError(
            f"duplicated class names {dups!r}: each class must be unique (class_names has "
            f"duplicates after stripping: {raw!r})"
        )
    return names


class TextEncoder:
    """Prompt-ensembled, L2-normalised text embeddings ``[K, C]`` of class names.

    Every name is put in each template, the prompts are embedded and normalised, averaged over
    the templates and re-normalised (``open_clip.build_zero_shot_classifier``). Results are kept in
    a bounded in-memory LRU cache and, when the weights are not a random initialisation, in an
    on-disk cache keyed by (model, weights identity, templates, names, open_clip version).

    The encoder holds a reference to a model that its owner keeps as a submodule (it is not a
    module itself, so it adds nothing to a state dict). It is meant for a frozen text tower; an
    architecture that trains text parameters calls ``clear()`` when they change, or builds it
    with ``cache=False``.

    Args:
        model: anything with ``encode_text(tokens, normalize=True) -> [N, C]`` (an open_clip CLIP).
        tokenizer: an open_clip tokenizer (``open_clip.get_tokenizer(model_name)``).
        model_name: the open_clip architecture (part of the cache key).
        identity: ``weights_identity`` of the weights (part of the cache key); "" or None, or a
            random initialisation, disables the disk cache.
        templates: a name of ``PROMPT_TEMPLATES`` or a sequence of templates.
        cache_dir: the disk cache folder; "" means ``$XDG_CACHE_HOME/clipdistill/text_embeddings``.
        cache: keep results in memory and on disk.
        memory_size: vocabularies kept in memory (least recently used dropped first).
        batch_size: prompts per text-tower call.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_name: str,
        identity: Optional[str],
        templates: Union[str, Sequence[Template]] = "openai",
        cache_dir: str = "",
        cache: bool = True,
        memory_size: int = 16,
        batch_size: int = 256,
    ):
        if isinstance(templates, str):
            if templates not in PROMPT_TEMPLATES:
                raise ConfigError(
                    f"prompt templates {templates!r} are not a known set; choose one of "
                    f"{sorted(PROMPT_TEMPLATES)}."
                )
            self.templates_name = templates
            templates = PROMPT_TEMPLATES[templates]
        else:
            self.templates_name = "custom"
        self.templates: Tuple[Template, ...] = tuple(templates)
        if not self.templates:
            raise ConfigError("prompt templates: the template set is empty")
        self._model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.identity = identity or None
        if self.identity is not None and self.identity.startswith("random-init"):
            self.identity = None  # a random model: never written to disk
        self.cache_dir = cache_dir
        self.cache = cache
        self.memory_size = int(memory_size)
        self.batch_size = int(batch_size)
        self._memory: "OrderedDict[Tuple[str, ...], torch.Tensor]" = OrderedDict()

    # ------------------------------------------------------------------------------ public
    def __call__(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K, C]`` float32 embeddings of ``class_names`` on the model's device (a copy the
        caller may modify). Names are checked and stripped (``check_class_names``)."""
        names = check_class_names(class_names)
        key = tuple(names)
        emb = self._memory.get(key) if self.cache else None
        if emb is None:
            path = self.cache_path(names) if self.cache else None
            emb = self._read(path, names) if path else None
            if emb is None:
                emb = self.compute(names)
                if path:
                    self._write(path, names, emb.cpu())
            if self.cache:
                self._memory[key] = emb
                while len(self._memory) > self.memory_size:
                    self._memory.popitem(last=False)
        else:
            self._memory.move_to_end(key)
        return emb.to(device=self.device, dtype=torch.float32, copy=True)

    def clear(self) -> None:
        """Forget the in-memory embeddings (after the text weights changed)."""
        self._memory.clear()

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @torch.no_grad()
    def compute(self, names: List[str]) -> torch.Tensor:
        """The embeddings of ``names``, computed now (no cache)."""
        per_batch = max(1, self.batch_size // len(self.templates))
        with torch.inference_mode(False):
            weights = open_clip.build_zero_shot_classifier(
                self._model,
                self.tokenizer,
                names,
                self.templates,
                num_classes_per_batch=per_batch,
                device=self.device,
            )
        return weights.T.float().contiguous()

    def cache_path(self, names: List[str]) -> Optional[str]:
        """The disk-cache file of ``names``, or None when the disk cache is not used."""
        if self.identity is None:
            return None
        directory = self.cache_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME", "~/.cache"), "clipdistill", "text_embeddings"
        )
        key = digest(
            [
                self.model_name,
                self.identity,
                template_strings(self.templates),
                names,
                open_clip.__version__,
            ]
        )
        return os.path.join(os.path.expanduser(directory), f"{key}.safetensors")

    # ------------------------------------------------------------------------------ disk
    def _read(self, path: str, names: List[str]) -> Optional[torch.Tensor]:
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
            if json.loads(meta.get("names", "null")) != names:
                raise ValueError("class names in the file differ")
            if emb.dtype != torch.float32 or emb.dim() != 2 or emb.shape[0] != len(names):
                raise ValueError(f"unexpected tensor {emb.dtype} {tuple(emb.shape)}")
            if not torch.isfinite(emb).all():
                raise ValueError("non-finite values")
        except Exception as e:
            logger.warning(
                f"Ignoring the corrupt text-embedding cache file {path} ({type(e).__name__}: {e}); "
                "recomputing and overwriting it."
            )
            return None
        logger.debug(f"Text embeddings of {len(names)} names read from {path}.")
        return emb.to(self.device)

    def _write(self, path: str, names: List[str], emb: torch.Tensor) -> None:
        metadata = {
            "names": json.dumps(names),
            "model_name": self.model_name,
            "weights": self.identity or "",
            "templates": json.dumps(template_strings(self.templates)),
            "open_clip": open_clip.__version__,
        }
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_path(path, fsync=False) as tmp:
                save_file({"embeddings": emb.contiguous()}, tmp, metadata=metadata)
        except OSError as e:
            logger.warning(f"Could not write the text-embedding cache {path}: {e}")
