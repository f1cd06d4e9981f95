"""Class colours: clipdistill's deterministic palette (datasets without ``stuff_colors``, label
maps and overlays of any vocabulary)."""

import colorsys
from typing import List

__all__ = ["deterministic_colors"]


def deterministic_colors(n: int) -> List[List[int]]:
    """``n`` distinct RGB colours, the same on every run (golden-ratio hue walk)."""
    colors = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.45 * ((i * 7) % 5) / 4
        v = 0.65 + 0.35 * ((i * 3) % 4) / 3
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colors.append([int(round(r * 255)), int(round(g * 255)), int(round(b * 255))])
    return colors
