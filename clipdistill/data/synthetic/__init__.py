"""The generated captioned world of the open-vocabulary testbed (shapes x colours).

``world``: the vocabulary, caption grammar and seen/unseen split; ``render``: vectorised scene
sampling and drawing; ``writer``: the dataset on disk (registered as ``testbed_sem_seg_*``).
"""

from .render import MAX_OBJECTS, Scenes, render_scenes, sample_scenes
from .world import BACKGROUND, COLOURS, DEFAULT_WORLD, SHAPES, World, caption_of, noun_phrase

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DEFAULT_WORLD",
    "MAX_OBJECTS",
    "SHAPES",
    "Scenes",
    "World",
    "caption_of",
    "noun_phrase",
    "render_scenes",
    "sample_scenes",
]
