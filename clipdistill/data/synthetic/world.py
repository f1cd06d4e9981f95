"""The vocabulary and grammar of the generated captioned world (the open-vocabulary testbed).

A world is a set of colours and surface patterns; every (colour, pattern) pair is a class named
``"<colour> <pattern> patch"`` ("red striped patch"). Each object is drawn with a random
silhouette (a circle, a star, a ring, ...) that is not part of its name: what names an object,
its colour and its pattern, can be read from any small part of it, as the local evidence real
CLIP's dense features carry (textures, materials, parts) can. Class 0 is ``"empty background"``,
so that the name of every class, put in the caption grammar, is the caption of an image showing
only that class: ``caption_of(["red striped patch"]) == "a red striped patch."`` and
``caption_of([]) == "an empty background."``. That same grammar is the prompt template of the
testbed teacher (``PROMPT_TEMPLATES["caption"]``), so the prompts scored at test time are
sentences of the training captions' language.

The seen/unseen split holds out one pattern per colour (a permutation, so that every colour and
every pattern of an unseen class is seen in other classes): unseen classes are new combinations of
seen words, never labelled in training, and the segmenters must name them from their text alone.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "COLOURS",
    "PATTERNS",
    "SHAPES",
    "BACKGROUND",
    "World",
    "DEFAULT_WORLD",
    "noun_phrase",
    "caption_of",
]

#: Colour name -> base RGB. Saturated hues only: backgrounds are low-saturation (see render.py),
#: so that a colour name always means an object's colour.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "green": (35, 170, 55),
    "blue": (35, 80, 225),
    "purple": (140, 50, 200),
    "pink": (245, 110, 190),
    "cyan": (30, 205, 215),
}

#: Surface patterns drawn by render.py (``pattern_masks``), in a fixed order (their index is the
#: pattern id): the object's colour alone, or alternated with a dark tone of it.
PATTERNS: Tuple[str, ...] = (
    "plain",
    "striped",
    "dotted",
    "checked",
    "zigzag",
    "gridded",
)

#: Silhouettes drawn by render.py (``shape_masks``), in a fixed order (their index is the shape
#: id). Not part of any class name: every object gets one at random.
SHAPES: Tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "crescent",
    "heart",
)

#: Name of class 0: the pixels of no object (and the whole of an image with no object).
BACKGROUND = "empty background"


def noun_phrase(name: str) -> str:
    """``"red striped patch"`` -> ``"a red striped patch"``, ``"orange dotted patch"`` ->
    ``"an orange dotted patch"``."""
    name = name.strip()
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def caption_of(names: Sequence[str]) -> str:
    """The caption of an image showing the objects ``names`` (in order).

    ``[]`` -> ``"an empty background."``; ``["red striped patch"]`` -> ``"a red striped
    patch."``; two -> ``"a red striped patch and a blue dotted patch."``; three ->
    ``"a red striped patch, a blue dotted patch and a green plain patch."``.
    """
    phrases = [noun_phrase(n) for n in names] or [noun_phrase(BACKGROUND)]
    if len(phrases) == 1:
        return phrases[0] + "."
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] + "."


@dataclass(frozen=True)
class World:
    """A colour x pattern vocabulary with its label encoding, silhouettes and seen/unseen split.

    Label value 0 is the background; object class ``1 + c * P + p`` is colour ``c`` and pattern
    ``p`` (``P`` patterns). ``unseen_shift`` selects the held-out classes: colour ``c`` loses
    pattern ``(c + unseen_shift) % P``, one class per colour and (with as many colours as
    patterns) one per pattern. ``silhouettes`` are the shapes objects are drawn with, at random.
    """

    colours: Tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
    patterns: Tuple[str, ...] = PATTERNS
    silhouettes: Tuple[str, ...] = SHAPES
    unseen_shift: int = 1
    #: the noun every class name ends with
    noun: str = "patch"

    def __post_init__(self):
        unknown = [c for c in self.colours if c not in COLOURS]
        unknown += [p for p in self.patterns if p not in PATTERNS]
        unknown += [s for s in self.silhouettes if s not in SHAPES]
        if unknown:
            raise ValueError(
                f"World: unknown colours/patterns/silhouettes {unknown}; known colours "
                f"{list(COLOURS)}, patterns {list(PATTERNS)}, silhouettes {list(SHAPES)}"
            )
        for what in ("colours", "patterns", "silhouettes"):
            values = getattr(self, what)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"World: {what} must be distinct and non-empty, got {values}")

    @property
    def num_colours(self) -> int:
        return len(self.colours)

    @property
    def num_patterns(self) -> int:
        return len(self.patterns)

    @property
    def num_object_classes(self) -> int:
        return self.num_colours * self.num_patterns

    def name(self, colour: int, pattern: int) -> str:
        """Class name of colour index ``colour`` and pattern index ``pattern``."""
        return f"{self.colours[colour]} {self.patterns[pattern]} {self.noun}"

    def pattern_name(self, pattern: int) -> str:
        """The class name without its colour (``"striped patch"``): the curriculum's words."""
        return f"{self.patterns[pattern]} {self.noun}"

    @property
    def class_names(self) -> List[str]:
        """All class names in label order: the background, then colour-major pairs."""
        return [BACKGROUND] + [
            self.name(c, p) for c in range(self.num_colours) for p in range(self.num_patterns)
        ]

    def class_id(self, colour: int, pattern: int) -> int:
        """Label value of colour index ``colour`` and pattern index ``pattern``."""
        return 1 + colour * self.num_patterns + pattern

    def colour_pattern(self, class_id: int) -> Tuple[int, int]:
        """Inverse of ``class_id`` for object classes."""
        if not 1 <= class_id <= self.num_object_classes:
            raise ValueError(f"{class_id} is not an object class of {self}")
        return divmod(class_id - 1, self.num_patterns)

    @property
    def unseen_ids(self) -> List[int]:
        """Label values of the held-out classes, sorted."""
        return sorted(
            self.class_id(c, (c + self.unseen_shift) % self.num_patterns)
            for c in range(self.num_colours)
        )

    @property
    def unseen_classes(self) -> List[str]:
        """Held-out class names (never labelled in training), in label order."""
        names = self.class_names
        return [names[i] for i in self.unseen_ids]

    @property
    def seen_classes(self) -> List[str]:
        """Every other class name, background included, in label order."""
        unseen = set(self.unseen_classes)
        return [n for n in self.class_names if n not in unseen]


#: The world of the registered testbed datasets and of the shipped teachers: 6 colours x 6
#: patterns = 36 object classes + background.
DEFAULT_WORLD = World()
