"""Stage 5: cutting footage into training clips at word boundaries, with 4k+1 frames at 25 fps,
and moving alignments into a clip's own time."""

from __future__ import annotations

import json
import math

from .align import Alignment, Interval
from .media import FPS


def frames_for(seconds: float) -> int:
    """The largest 4k+1 frame count that fits in ``seconds``."""
    return max(1, int(seconds * FPS - 1 + 1e-6) // 4 * 4 + 1)


def _ceil_frames(seconds: float) -> int:
    """The smallest 4k+1 frame count that holds ``seconds``."""
    return max(1, math.ceil((seconds * FPS - 1 - 1e-6) / 4)) * 4 + 1


def segment(words: list[Interval], duration: float, min_s: float, max_s: float, pad_s: float = 0.2) -> list[tuple[float, int]]:
    """Clips ``(start_s, num_frames)`` inside ``[0, duration]`` that never cut through a word.

    Greedy over the words in time order: a clip takes words while their span (first start
    to last end) stays within ``max_s``. Its frame count is the smallest 4k+1 that holds that
    span plus ``pad_s`` of air either side (at least ``min_s``), and it is placed around the
    words inside the room it may use: from the end of the previous clip (or dropped word) to
    the middle of the pause after its last word (or ``duration``). When 4k+1 frames do not fit
    that room, the clip gives up its last word and tries again; a single word that cannot fit
    (longer than ``max_s``, or boxed in by neighbours with no pause) is dropped, never cut.
    Footage without words is cut into ``max_s`` pieces.
    """
    if duration < min_s:
        return []
    if not words:
        out, t = [], 0.0
        while duration - t >= min_s - 1e-9:
            n = frames_for(min(max_s, duration - t))
            if n / FPS < min_s - 1e-9:
                break
            out.append((round(t, 6), n))
            t += n / FPS
        return out
    words = sorted((w for w in words if w.start < duration), key=lambda w: w.start)
    clips: list[tuple[float, int]] = []
    floor = 0.0  # nothing before this may enter the next clip (end of the previous clip or dropped word)
    i = 0
    while i < len(words):
        j = i
        while j + 1 < len(words) and words[j + 1].end - words[i].start <= max_s:
            j += 1
        placed = None
        while placed is None and j >= i:
            placed = _place(words, i, j, floor, duration, min_s, max_s, pad_s)
            if placed is None:
                j -= 1
        if placed is None:  # word i cannot be in any clip: drop it, and everything up to its end
            floor = max(floor, words[i].end)
            i += 1
            continue
        start, n = placed
        if n:
            clips.append((round(start, 6), n))
            floor = start + n / FPS
        else:  # shorter than min_s: skipped, and its words stay out of the next clip
            floor = max(floor, words[j].end)
        i = j + 1
    return clips


def _place(words: list[Interval], i: int, j: int, floor: float, duration: float, min_s: float, max_s: float,
           pad_s: float) -> tuple[float, int] | None:  # fmt: skip
    """Where a clip of words ``i..j`` goes: ``(start, frames)``; ``(0, 0)`` when it would be shorter than
    ``min_s``; ``None`` when no 4k+1 frame count fits between its neighbours."""
    lo = max(floor, words[i - 1].end if i > 0 else 0.0)
    hi = duration if j + 1 >= len(words) else (words[j].end + words[j + 1].start) / 2
    first, last = words[i].start, words[j].end
    if first < lo - 1e-6 or last - first > max_s + 1e-6:
        return None
    room = min(hi - lo, max_s)
    need = _ceil_frames(last - first)
    if need / FPS > room + 1e-6:
        return None
    n = min(max(_ceil_frames(last - first + 2 * pad_s), _ceil_frames(min_s)), frames_for(room))
    n = max(n, need)
    if n / FPS < min_s - 1e-6:
        return 0.0, 0
    start = min(max(first - (n / FPS - (last - first)) / 2, lo), hi - n / FPS)
    return start, n


def window(alignment: Alignment, start: float, end: float) -> Alignment:
    """The intervals wholly inside ``[start, end]``, in the window's own time (0 = ``start``)."""

    def keep(items: list[Interval]) -> list[Interval]:
        return [Interval(round(i.start - start, 4), round(i.end - start, 4), i.label, i.confidence)
                for i in items if i.start >= start - 1e-6 and i.end <= end + 1e-6]  # fmt: skip

    return Alignment(alignment.method, keep(alignment.words), keep(alignment.phonemes))


def shift(alignment: Alignment, offset: float) -> Alignment:
    """Every interval moved by ``offset`` seconds."""
    mv = lambda xs: [Interval(i.start + offset, i.end + offset, i.label, i.confidence) for i in xs]  # noqa: E731
    return Alignment(alignment.method, mv(alignment.words), mv(alignment.phonemes))


def alignment_from_json(text: str) -> Alignment:
    """The inverse of ``Alignment.to_json`` (``{"method", "words", "phonemes"}``)."""
    d = json.loads(text)
    iv = lambda xs: [Interval(float(x["start"]), float(x["end"]), str(x["label"]), float(x.get("confidence", 1.0)))  # noqa: E731
                     for x in xs]  # fmt: skip
    return Alignment(d.get("method", "none"), iv(d.get("words", [])), iv(d.get("phonemes", [])))
