"""Stage 5: cutting footage into training clips that start and end in pauses, with 4k+1 frames at 25 fps,
accounting for every second that does not become a clip, and moving alignments into a clip's own time.

How words become clips (:func:`plan`):

0. Intervals labelled ``""`` are speech without a transcript: they never share a clip with transcribed words
   (its caption would miss a Dialogue line).
1. A run of words whose 4k+1 frame count would exceed ``max_s`` is split at its **longest inner pause**,
   recursively, until every piece fits. A single word longer than ``max_s`` cannot be split without cutting
   it: it is dropped as a *bad segment* (and accounted).
2. Each piece becomes one clip. Its frame count is the smallest 4k+1 that holds its words plus ``pad_s`` of
   air either side (at least ``min_s``), and it may only use the pauses around it: from the end of the
   previous clip (or word) to the start of the next word. The rounding to 4k+1 is absorbed by those
   pauses, preferring the near half of each pause and reaching into the rest when it must; a clip never
   gives up a word to make the rounding work. A piece whose pauses cannot hold even its own words rounded
   up, or ``min_s``, is dropped with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hhtune.contract import FPS, frames_for, frames_holding
from hhtune.speech.align import Alignment, Interval

_EPS = 1e-6


@dataclass
class PlannedClip:
    """A planned clip: where it starts, how many frames, which words (indices into the word list)."""

    start: float
    frames: int
    words: list[int] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.frames / FPS


@dataclass
class Dropped:
    """A stretch of words that could not become a clip, and why."""

    start: float
    end: float
    reason: str


@dataclass
class Plan:
    """Clips and dropped stretches of one file."""

    clips: list[PlannedClip] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def _pieces(words: list[Interval], i: int, j: int, limit: int, out: list[tuple[int, int]]) -> None:
    """Split words ``i..j`` (inclusive) at their longest inner pause until each piece's 4k+1 frames fit ``limit``."""
    if i == j or frames_holding(words[j].end - words[i].start) <= limit:
        out.append((i, j))
        return
    gaps = [words[k + 1].start - words[k].end for k in range(i, j)]
    cut = i + max(range(len(gaps)), key=lambda k: (gaps[k], -abs(2 * k - len(gaps))))  # ties: nearest the middle
    _pieces(words, i, cut, limit, out)
    _pieces(words, cut + 1, j, limit, out)


def plan(words: list[Interval], duration: float, min_s: float, max_s: float, pad_s: float = 0.2) -> Plan:
    """Clips over ``[0, duration]`` that hold every word they can and never cut one (see the module doc)."""
    words = sorted((w for w in words if w.start < duration - _EPS), key=lambda w: w.start)
    out = Plan()
    if not words:
        return out
    limit = frames_for(max_s)
    pieces: list[tuple[int, int]] = []
    start = 0
    for k in range(1, len(words) + 1):  # transcribed words and untranscribed speech (label "") never share a clip
        if k == len(words) or (words[k].label == "") != (words[start].label == ""):
            _pieces(words, start, k - 1, limit, pieces)
            start = k
    floor = 0.0
    for i, j in pieces:
        first, last = words[i].start, min(words[j].end, duration)
        if i == j and frames_holding(last - first) > limit:
            out.dropped.append(Dropped(first, last, f"bad segment: one word longer than max_seconds ({max_s} s)"))
            continue
        placed = _try(words, i, j, floor, duration, min_s, limit, pad_s)
        if placed is not None:
            out.clips.append(placed)
            floor = placed.end
            continue
        # the pauses around the piece cannot absorb its rounding: cut it elsewhere, greedily, most words first
        k = i
        while k <= j:
            best = next((c for e in range(j, k - 1, -1) if (c := _try(words, k, e, floor, duration, min_s, limit,
                                                                         pad_s)) is not None), None)  # fmt: skip
            if best is None:
                w = words[k]
                room = ((words[k + 1].start if k + 1 < len(words) else duration)
                        - max(floor, words[k - 1].end if k else 0))
                why = ("too short: the pauses around it cannot make min_seconds" if room < min_s
                       else "bad segment: no pause to round it to 4k+1 frames without cutting a neighbouring word")
                out.dropped.append(Dropped(w.start, min(w.end, duration), why))
                floor = max(floor, w.end)
                k += 1
                continue
            out.clips.append(best)
            floor = best.end
            k = best.words[-1] + 1
    return out


def _try(words: list[Interval], i: int, j: int, floor: float, duration: float, min_s: float, limit: int,
         pad_s: float) -> PlannedClip | None:  # fmt: skip
    """Words ``i..j`` as one clip between the previous clip (``floor``) and the next word, or ``None``."""
    first, last = words[i].start, min(words[j].end, duration)
    lo = max(floor, words[i - 1].end if i > 0 else 0.0)
    nxt = words[j + 1].start if j + 1 < len(words) else duration
    for hi in ((last + nxt) / 2, nxt):  # the near half of the next pause first, all of it if needed
        placed = _place(first, last, lo, hi, min_s, limit, pad_s)
        if placed is not None:
            return PlannedClip(round(placed[0], 6), placed[1], list(range(i, j + 1)))
    return None


def _place(first: float, last: float, lo: float, hi: float, min_s: float, limit: int,
           pad_s: float) -> tuple[float, int] | None:  # fmt: skip
    """``(start, frames)`` of a clip holding ``[first, last]`` inside ``[lo, hi]``, or ``None``."""
    room = hi - lo
    need = max(frames_holding(last - first), frames_holding(min_s))
    if need > limit or need / FPS > room + _EPS:
        return None
    n = min(max(frames_holding(last - first + 2 * pad_s), need), frames_for(min(room, limit / FPS) + _EPS))
    n = max(n, need)
    extra = n / FPS - (last - first)
    start = min(max(first - extra / 2, lo), hi - n / FPS)
    start = min(start, first)  # never start after the first word
    if start + n / FPS < last - _EPS:
        return None
    return start, n


def fixed_clips(duration: float, min_s: float, max_s: float) -> Plan:
    """Footage with no words to cut between (music, ambience, no audio track): the fewest equal pieces of at most
    ``max_s``, each the longest 4k+1 frames that fits its piece; none when a piece would be under ``min_s``."""
    out = Plan()
    n = max(1, math.ceil(duration / max_s - _EPS))
    piece = duration / n
    frames = frames_for(piece)
    if frames / FPS < min_s - _EPS:
        out.dropped.append(Dropped(0.0, duration, f"too short: under min_seconds ({min_s} s)"))
        return out
    out.clips = [PlannedClip(round(k * piece, 6), frames) for k in range(n)]
    return out


def segment(words: list[Interval], duration: float, min_s: float, max_s: float,
            pad_s: float = 0.2) -> list[tuple[float, int]]:  # fmt: skip
    """``(start_s, frames)`` of the clips :func:`plan` makes."""
    return [(c.start, c.frames) for c in plan(words, duration, min_s, max_s, pad_s).clips]


def runs(active: list[bool] | None, hop_s: float, offset: float = 0.0) -> list[Interval]:
    """Runs of ``True`` in a per-hop activity array as intervals (label ``"speech"``)."""
    out, start = [], None
    for k, v in enumerate([*(active or []), False]):
        if v and start is None:
            start = k
        elif not v and start is not None:
            out.append(Interval(round(offset + start * hop_s, 4), round(offset + k * hop_s, 4), "speech"))
            start = None
    return out


def window(alignment: Alignment, start: float, end: float) -> Alignment:
    """The intervals wholly inside ``[start, end]``, in the window's own time (0 = ``start``)."""

    def keep(items: list[Interval]) -> list[Interval]:
        return [Interval(round(i.start - start, 4), round(i.end - start, 4), i.label, i.confidence)
                for i in items if i.start >= start - _EPS and i.end <= end + _EPS]  # fmt: skip

    return Alignment(alignment.method, keep(alignment.words), keep(alignment.phonemes), list(alignment.notes))


def shift(alignment: Alignment, offset: float) -> Alignment:
    """Every interval moved by ``offset`` seconds."""
    mv = lambda xs: [Interval(i.start + offset, i.end + offset, i.label, i.confidence) for i in xs]
    return Alignment(alignment.method, mv(alignment.words), mv(alignment.phonemes), list(alignment.notes))


def alignment_from_json(text: str) -> Alignment:
    """The inverse of ``Alignment.to_json`` (``{"method", "words", "phonemes", "notes"}``)."""
    return Alignment.from_json(text)
