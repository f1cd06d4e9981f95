"""SAN's vocabulary augmentation for free-form vocabularies (its demo's option).

With a short user vocabulary, every pixel goes to one of the few names, however unlike it is.
SAN's demo therefore scores the vocabulary together with the COCO-Stuff names ("COCO-all": all
171, "COCO-stuff": the 91 stuff names) it does not already contain, and reports pixels won by an
added name as "other".
"""

from typing import List, Sequence

from ...data.datasets.common import load_class_ids, load_class_names

__all__ = ["augment_vocabulary", "AUGMENTATIONS", "OTHER"]

#: name of the extra output class collecting the pixels of the added names
OTHER = "other"
AUGMENTATIONS = ("", "COCO-all", "COCO-stuff")
#: COCO ids above this are stuff classes (things are 1..90)
_LAST_THING_ID = 91


def _coco_names(kind: str) -> List[str]:
    names = load_class_names("coco_stuff171.txt")
    if kind == "COCO-all":
        return names
    ids = load_class_ids("coco_stuff171_ids.txt")
    return [n for n, i in zip(names, ids) if i > _LAST_THING_ID]


def augment_vocabulary(names: Sequence[str], augmentation: str) -> List[str]:
    """``names`` followed by the augmentation's names not among them (in COCO-Stuff order).

    Raises:
        ValueError: unknown ``augmentation`` (the message names the config key).
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"MODEL.SAN.VOCABULARY_AUGMENTATION={augmentation!r}: use one of {AUGMENTATIONS}"
        )
    names = list(names)
    if not augmentation:
        return names
    present = set(names)
    return names + [n for n in _coco_names(augmentation) if n not in present]
