"""The vocabulary and grammar of the generated captioned world (the open-vocabulary testbed).

A world is a set of colours and shapes; every (colour, shape) pair is a class named
``"<colour> <shape>"`` ("red star"). Class 0 is ``"empty background"``, so that the name of every
class, put in the caption grammar, is the caption of an image showing only that class:
``caption_of(["red star"]) == "a red star."`` and ``caption_of([]) == "an empty background."``.
That same grammar is the prompt template of the testbed teacher (``PROMPT_TEMPLATES["caption"]``),
so the prompts scored at test time are sentences of the training captions' language.

The seen/unseen split holds out one shape per colour (a permutation, so that every colour and
every shape of an unseen class is seen in other classes): unseen classes are never labelled in
training, and the segmenters must name them from their text alone.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "COLOURS",
    "SHAPES",
    "BACKGROUND",
    "World",
    "DEFAULT_WORLD",
    "noun_phrase",
    "caption_of",
]

#: Colour name -> base RGB. Saturated hues only: backgrounds are low-saturation (see render.py),
#: so that a colour name always means the object's colour.
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

#: Shapes drawn by render.py, in a fixed order (their index is the shape id).
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
    """``"red star"`` -> ``"a red star"``, ``"orange ring"`` -> ``"an orange ring"``."""
    name = name.strip()
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def caption_of(names: Sequence[str]) -> str:
    """The caption of an image showing the objects ``names`` (in order).

    ``[]`` -> ``"an empty background."``; ``["red star"]`` -> ``"a red star."``;
    ``["red star", "blue ring"]`` -> ``"a red star and a blue ring."``;
    three -> ``"a red star, a blue ring and a green cross."``.
    """
    phrases = [noun_phrase(n) for n in names] or [noun_phrase(BACKGROUND)]
    if len(phrases) == 1:
        return phrases[0] + "."
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] + "."


@dataclass(frozen=True)
class World:
    """A colour x shape vocabulary with its label encoding and seen/unseen split.

    Label value 0 is the background; object class ``1 + c * S + s`` is colour ``c`` and shape
    ``s`` (``S`` shapes). ``unseen_shift`` selects the held-out classes: colour ``c`` loses shape
    ``(c + unseen_shift) % S``, one class per colour and (with as many colours as shapes) one per
    shape.
    """

    colours: Tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
    shapes: Tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
    unseen_shift: int = 1

    def __post_init__(self):
        unknown = [c for c in self.colours if c not in COLOURS]
        unknown += [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(
                f"World: unknown colours/shapes {unknown}; known colours {list(COLOURS)}, "
                f"shapes {list(SHAPES)}"
            )
        if len(set(self.colours)) != len(self.colours) or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"World: duplicated colours or shapes in {self}")

    @property
    def num_colours(self) -> int:
        return len(self.colours)

    @property
    def num_shapes(self) -> int:
        return len(self.shapes)

    @property
    def num_object_classes(self) -> int:
        return self.num_colours * self.num_shapes

    @property
    def class_names(self) -> List[str]:
        """All class names in label order: the background, then colour-major pairs."""
        return [BACKGROUND] + [f"{c} {s}" for c in self.colours for s in self.shapes]

    def class_id(self, colour: int, shape: int) -> int:
        """Label value of colour index ``colour`` and shape index ``shape``."""
        return 1 + colour * self.num_shapes + shape

    def colour_shape(self, class_id: int) -> Tuple[int, int]:
        """Inverse of ``class_id`` for object classes."""
        if not 1 <= class_id <= self.num_object_classes:
            raise ValueError(f"{class_id} is not an object class of {self}")
        return divmod(class_id - 1, self.num_shapes)

    @property
    def unseen_classes(self) -> List[str]:
        """Held-out class names (never labelled in training), in label order."""
        names = self.class_names
        ids = sorted(
            self.class_id(c, (c + self.unseen_shift) % self.num_shapes)
            for c in range(self.num_colours)
        )
        return [names[i] for i in ids]

    @property
    def seen_classes(self) -> List[str]:
        """Every other class name, background included, in label order."""
        unseen = set(self.unseen_classes)
        return [n for n in self.class_names if n not in unseen]


#: The world of the registered testbed datasets and of the shipped teacher: 6 colours x 6
#: shapes = 36 object classes + background.
DEFAULT_WORLD = World()
