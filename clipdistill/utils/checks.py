"""Small value checks shared by the config validation of the engine and of the architectures: each
problem is one string naming the key, its value and what would work."""

import math
from typing import List

__all__ = ["is_int", "is_num", "Problems"]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Problems(List[str]):
    """A list of ``"KEY=VALUE: expected"`` strings."""

    def need(self, ok: bool, key: str, value, expected: str) -> None:
        if not ok:
            self.append(f"{key}={value!r}: {expected}")
