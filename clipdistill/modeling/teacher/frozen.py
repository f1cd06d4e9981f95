"""Frozen auxiliary modules (teachers): no gradients, always in eval mode, not in checkpoints."""

from collections import OrderedDict
from typing import List

from torch import nn

__all__ = ["FrozenAuxiliary", "frozen_prefixes", "ignore_frozen_missing_keys"]


class FrozenAuxiliary(nn.Module):
    """Base of a module that another model uses but never trains or saves (a teacher).

    It stays in eval mode whatever ``train()`` says, and it contributes nothing to its parent's
    ``state_dict()``: it is rebuilt from its own config whenever the parent is built, so storing
    it in every checkpoint would waste space, and loading a checkpoint must never overwrite it.
    Subclasses call ``self.requires_grad_(False)`` once their parameters exist.
    """

    def train(self, mode: bool = True) -> "FrozenAuxiliary":
        """Stay in eval mode, whatever ``mode``."""
        return super().train(False)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Contribute nothing: the parent's ``destination`` is returned untouched."""
        if args and destination is None and isinstance(args[0], dict):
            destination = args[0]
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()
        return destination


def frozen_prefixes(model: nn.Module) -> List[str]:
    """State-dict prefixes (``"teacher."``) of the ``FrozenAuxiliary`` submodules of ``model``."""
    return [
        name + "." for name, m in model.named_modules() if name and isinstance(m, FrozenAuxiliary)
    ]


def ignore_frozen_missing_keys(module: nn.Module, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: frozen submodules are not part of the state, so their keys
    are never "missing" from a checkpoint (strict loading stays meaningful)."""
    prefixes = tuple(frozen_prefixes(module))
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith(prefixes)]
