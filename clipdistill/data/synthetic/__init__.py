"""The generated captioned world of the open-vocabulary testbed (colours x patterns).

``world``: the vocabulary, caption grammar and seen/unseen split; ``render``: vectorised scene
sampling and drawing; ``writer``: the dataset on disk (registered as ``testbed_sem_seg_*``).
"""

from .render import MAX_OBJECTS, Scenes, pattern_caption, render_scenes, sample_scenes
from .world import (
    BACKGROUND,
    COLOURS,
    DEFAULT_WORLD,
    PATTERNS,
    SHAPES,
    World,
    caption_of,
    noun_phrase,
)

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DEFAULT_WORLD",
    "MAX_OBJECTS",
    "PATTERNS",
    "SHAPES",
    "Scenes",
    "World",
    "caption_of",
    "noun_phrase",
    "pattern_caption",
    "render_scenes",
    "sample_scenes",
]
