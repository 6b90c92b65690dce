"""Cutting footage into training clips at word boundaries, with 4k+1 frames at 25 fps."""

from __future__ import annotations

from .align import Interval
from .media import FPS


def frames_for(seconds: float) -> int:
    """The largest 4k+1 frame count that fits in ``seconds``."""
    return max(1, int(seconds * FPS - 1) // 4 * 4 + 1)


def segment(words: list[Interval], duration: float, min_s: float, max_s: float) -> list[tuple[float, int]]:
    """Clips ``(start_s, num_frames)`` that never cut through a word.

    Greedy: a clip grows word by word while it stays within ``max_s``; it ends in the
    middle of the pause after its last word (or at the file's end). Clips shorter than
    ``min_s`` are dropped. Footage without words is cut into ``max_s`` pieces.
    """
    if duration < min_s:
        return []
    if not words:
        out, t = [], 0.0
        while duration - t >= min_s:
            n = frames_for(min(max_s, duration - t))
            out.append((t, n))
            t += n / FPS
        return out
    words = sorted(words, key=lambda w: w.start)
    clips: list[tuple[float, int]] = []
    i = 0
    start = 0.0
    while i < len(words):
        j = i
        while j + 1 < len(words) and words[j + 1].end - start <= max_s:
            j += 1
        gap_end = words[j + 1].start if j + 1 < len(words) else duration
        end = min(start + max_s, (words[j].end + gap_end) / 2 if j + 1 < len(words) else duration)
        n = frames_for(end - start)
        if words[j].end - start > n / FPS + 1e-6:  # a single word longer than max_s: skip it
            i, start = j + 1, gap_end
            continue
        if n / FPS >= min_s:
            clips.append((start, n))
        start = (words[j].end + gap_end) / 2 if j + 1 < len(words) else duration
        i = j + 1
    return clips
