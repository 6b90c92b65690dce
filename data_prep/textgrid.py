"""Praat TextGrid output of an alignment (long text format, "words" and "phones" tiers)."""

from __future__ import annotations

from pathlib import Path

from hhtune.io import atomic_write_text
from hhtune.speech.align import Alignment, Interval


def _tier(name: str, items: list[Interval], duration: float) -> list[str]:
    filled: list[tuple[float, float, str]] = []
    t = 0.0
    for iv in sorted(items, key=lambda i: i.start):
        start, end = max(iv.start, t), min(iv.end, duration)
        if start > t + 1e-9:
            filled.append((t, start, ""))
        if end > start:
            filled.append((start, end, iv.label))
            t = end
    if t < duration - 1e-9 or not filled:
        filled.append((t, duration, ""))
    lines = ['        class = "IntervalTier"', f'        name = "{name}"', "        xmin = 0",
             f"        xmax = {duration}",
             f"        intervals: size = {len(filled)}"]  # fmt: skip
    for k, (a, b, label) in enumerate(filled, 1):
        text = label.replace('"', '""')
        lines += [f"        intervals [{k}]:", f"            xmin = {a}", f"            xmax = {b}",
                  f'            text = "{text}"']
    return lines


def textgrid_text(alignment: Alignment, duration: float) -> str:
    """The TextGrid file content."""
    head = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration}",
            "tiers? <exists>", "size = 2", "item []:"]  # fmt: skip
    body = []
    for k, (name, items) in enumerate((("words", alignment.words), ("phones", alignment.phonemes)), 1):
        body += [f"    item [{k}]:", *_tier(name, items, duration)]
    return "\n".join(head + body) + "\n"


def write_textgrid(alignment: Alignment, duration: float, path: str | Path) -> None:
    """Write the TextGrid atomically."""
    atomic_write_text(Path(path), textgrid_text(alignment, duration))
