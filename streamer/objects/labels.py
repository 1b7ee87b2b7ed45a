"""The one label policy: what an object is called once the VLM has described it, in every mode."""

from __future__ import annotations

import re
import unicodedata

LABEL_WORDS = 6  # a label is the description's first clause, cut to this many words
LABEL_COLUMNS = 40  # and to this many columns (a wide character, as in Chinese, takes two)
# Where a clause ends: . , ; ! ? (or "...") before a space or the end (not the point of "3.5"),
# or the full-width marks Chinese and Japanese answers use, wherever they stand. Not a colon:
# "Object: a red mug" names the mug.
_CLAUSE_END = re.compile(r"[.,;!?]+(?:\s|$)|[。，、；！？]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]+")


def label_from_description(description: str) -> str:
    """The one label policy: the description's first clause, at most LABEL_WORDS words and
    LABEL_COLUMNS columns, control characters out ("…" where it was cut)."""
    first = _CLAUSE_END.split(_CONTROL.sub(" ", description).strip(), maxsplit=1)[0]
    parts = first.split()
    label, cut = " ".join(parts[:LABEL_WORDS]), len(parts) > LABEL_WORDS
    widths = [2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in label]
    if sum(widths) + cut > LABEL_COLUMNS:  # cut to leave a column for the "…"
        used, end = 0, 0
        while used + widths[end] <= LABEL_COLUMNS - 1:
            used, end = used + widths[end], end + 1
        label, cut = label[:end].rstrip(), True
    return label + ("…" if cut else "")
