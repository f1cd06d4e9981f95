"""A restricted unpickler: plain containers and numpy arrays only, never code.

``pickle.load`` runs whatever a file asks for (``__reduce__`` of any importable callable), so a
crafted file given as weights or as a dataset index runs code. The files clipdistill has to read
as pickles (detectron2 model-zoo ``.pkl`` weights, ADE20K's ``index_ade20k.pkl``) hold only
dicts, lists, strings, numbers and numpy arrays; :func:`restricted_load` allows exactly those
and raises ``pickle.UnpicklingError`` naming any other global the file asks for.
"""

import pickle
from typing import IO, Any

__all__ = ["restricted_load", "ALLOWED_GLOBALS"]

#: (module, name) a pickle may refer to: numpy arrays, dtypes and scalars (numpy 1 and 2 module
#: names), ordered dicts, and the byte decoding numpy uses for protocol-2 arrays
ALLOWED_GLOBALS = frozenset(
    [
        (m, n)
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
        for n in ("_reconstruct", "scalar")
    ]
    + [
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    ]
    # protocol-2 pickles name the builtins module "__builtin__"
    + [(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "complex")]
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load the global '{module}.{name}' (only containers and numpy arrays "
            "are allowed: a pickle that needs it could run code)"
        )


def restricted_load(f: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """``pickle.load(f)`` allowing only plain containers and numpy arrays (see module doc).

    Raises:
        pickle.UnpicklingError: the file asks for anything else (names it).
    """
    return _RestrictedUnpickler(f, encoding=encoding).load()
