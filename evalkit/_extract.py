"""TEMPORARY placeholder (helper H2 writes the real one)."""
from __future__ import annotations
import re
from collections.abc import Sequence
def extract_code(reply: str, entry_point: str) -> str:
    blocks = re.findall(r"```(?:python)?\n(.*?)```", reply, re.S)
    for b in blocks:
        if f"def {entry_point}" in b:
            return b
    return blocks[0] if blocks else reply
def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
