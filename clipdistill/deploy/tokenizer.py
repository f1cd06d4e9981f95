"""CLIP's byte-level BPE tokenizer without torch: token ids identical to open_clip's
``SimpleTokenizer`` (clean "lower", no reduction mask), for the exported text tower.

Why not Hugging Face ``tokenizers``: open_clip cleans text with ``ftfy.fix_text`` and a double
``html.unescape`` before splitting, and ``tokenizers`` has no such normaliser, so it could not
reproduce the cleaning step exactly (the strings on which it would differ were not measured).
This module does the same cleaning (ftfy, html), the same split (``regex``, open_clip's pattern),
the same byte-to-unicode map and the same merge-rank BPE, reading the merges from open_clip's
``bpe_simple_vocab_16e6.txt.gz`` (copied into an exported folder). Needs only ``ftfy`` and
``regex``; tested token for token against open_clip (tests/deploy/test_open_vocab.py).
"""

import gzip
import html
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple
import numpy as np

import ftfy
import regex

__all__ = ["BPETokenizer", "NUM_MERGES"]

#: merges used by open_clip (49152 tokens = 256 bytes x 2 + merges + 2 special tokens)
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = "<start_of_text>", "<end_of_text>"


@lru_cache()
def _byte_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class BPETokenizer:
    """``tokenizer(texts) -> int64 [N, context_length]``: ``<start_of_text>`` + BPE ids +
    ``<end_of_text>``, zero-padded; a longer text is cut to ``context_length`` with its last
    token replaced by ``<end_of_text>`` (open_clip's truncation).

    Args:
        bpe_path: open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (first line a header, one merge
            ``"a b"`` per line).
        context_length: tokens per text (77 for every CLIP in open_clip).
    """

    def __init__(self, bpe_path: str, context_length: int = 77):
        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges: List[Tuple[str, str]] = [tuple(m.split()) for m in lines[1 : NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{bpe_path}: not open_clip's BPE merge file ({len(merges)} merges)")
        base = list(_byte_to_unicode().values())
        vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.context_length = int(context_length)
        self._pattern = regex.compile(
            SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: Dict[str, List[str]] = {SOT: [SOT], EOT: [EOT]}

    def _bpe(self, word: str) -> List[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> List[int]:
        """BPE ids of ``text`` without the start/end tokens."""
        table = _byte_to_unicode()
        ids = []
        for piece in self._pattern.findall(_clean(text)):
            word = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(word))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return out
