"""The one text form for anything with settings: 'name' or 'name:key=value,key=value'.

Optimizers (`adam:betas=(0.9,0.95),amsgrad=True`), landscapes (`quadratic:kappa=100`), schedules
(`multistep:milestones=[30,60]`) and tasks (`digits:hidden=128`) are all written this way on the
command line. Values are Python literals; a bare word is kept as a string (`matrix_view=flatten`).
"""

from __future__ import annotations

import ast
from typing import Sequence


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so 'betas=(0.9,0.99),lr=1e-3' gives two pieces."""
    pieces, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += ch
    return [p for p in (*pieces, current) if p.strip()]


def literal(text: str, strict: bool = False, key: str = "value"):
    """A Python literal (3, 0.1, 1e-4, [10, 20], True, None), or else the bare string (an error if strict)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if strict:
            raise ValueError(f"{key} needs a Python literal (a number, True, [1, 2], …), "
                             f"got {text!r}") from None
        return text


def parse(text: str, strict: bool = False) -> tuple[str, dict]:
    """'name' or 'name:key=value,…' -> (name, settings); strict: every value must be a literal."""
    name, _, rest = text.strip().partition(":")
    settings = {}
    for piece in split_top_level(rest):
        key, eq, value = (s.strip() for s in piece.partition("="))
        if not eq or not key:
            raise ValueError(f"expected key=value in {text!r}, got {piece.strip()!r}")
        settings[key] = literal(value, strict, key)
    return name.strip(), settings


def split_list(items: str | Sequence[str]) -> list[str]:
    """'sgd:lr=0.01,momentum=0.9,adam' -> ['sgd:lr=0.01,momentum=0.9', 'adam'].

    Commas (or list items) separate entries, except that a key=value piece continues the entry
    before it, so one comma-separated argument can carry several entries with their settings.
    """
    items = [items] if isinstance(items, str) else items
    pieces = [p.strip() for item in items for p in split_top_level(item)]
    out: list[str] = []
    for piece in pieces:
        if "=" in piece and ":" not in piece.split("=", 1)[0]:
            if not out:
                raise ValueError(f"{piece!r} needs an optimizer before it, e.g. sgd:{piece}")
            out[-1] += ("," if ":" in out[-1] else ":") + piece
        else:
            out.append(piece)
    return out
