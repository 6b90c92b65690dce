"""Every second of a file accounted for: a timeline of used and dropped ranges, each dropped range with its reason,
and the share of the speech that the clips keep."""

from __future__ import annotations

import numpy as np

from hhtune.speech.align import Interval

TICK = 0.01  # seconds per timeline cell

USED = "used"
SILENCE = "silence"
UNTRANSCRIBED = "speech without transcript"
NOT_IN_CLIP = "transcribed speech not in any clip"


def timeline(duration: float, clips: list[tuple[float, float]], words: list[Interval], speech: list[Interval],
             dropped: list[tuple[float, float, str]],
             untranscribed_reason: str = UNTRANSCRIBED) -> list[dict]:  # fmt: skip
    """``[{start, end, status, reason}]`` covering ``[0, duration]`` exactly, in order.

    Labels, later ones winning: silence; speech (detected) without transcript; transcribed words not in a clip;
    dropped stretches with their own reason; used (inside a clip). The last range ends at ``duration``.
    """
    n = max(1, round(duration / TICK))
    labels = [SILENCE, untranscribed_reason, NOT_IN_CLIP]
    cells = np.zeros(n, dtype=np.int32)

    def paint(a: float, b: float, code: int) -> None:
        cells[max(0, round(a / TICK)) : min(n, round(b / TICK))] = code

    for s in speech:
        paint(s.start, s.end, 1)
    for w in words:
        paint(w.start, w.end, 2)
    for a, b, why in dropped:
        if why not in labels:
            labels.append(why)
        paint(a, b, labels.index(why))
    labels.append(USED)
    for a, b in clips:
        paint(a, b, len(labels) - 1)
    edges = np.flatnonzero(np.diff(cells)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [n]])
    out = []
    for a, b in zip(starts, ends):
        label = labels[int(cells[a])]
        out.append({"start": round(a * TICK, 3), "end": round(min(b * TICK, duration), 3),
                    "status": "used" if label == USED else "dropped",
                    "reason": "" if label == USED else label})  # fmt: skip
    out[-1]["end"] = round(duration, 3)
    return out


def whole_file(duration: float, reason: str) -> list[dict]:
    """The timeline of a file that made no clip at all for one reason."""
    return [{"start": 0.0, "end": round(duration, 3), "status": "dropped", "reason": reason}] if duration > 0 else []


def seconds_by_reason(ranges: list[dict]) -> dict[str, float]:
    """Seconds per status/reason: ``{"used": s, "<reason>": s, ...}``."""
    out: dict[str, float] = {}
    for r in ranges:
        key = "used" if r["status"] == "used" else r["reason"]
        out[key] = round(out.get(key, 0.0) + r["end"] - r["start"], 3)
    return out


def coverage(spans: list[Interval], clips: list[tuple[float, float]]) -> tuple[float, float]:
    """``(seconds of spans inside clips, seconds of spans)`` (overlaps counted once)."""
    if not spans:
        return 0.0, 0.0
    end = max(s.end for s in spans)
    n = int(np.ceil(end / TICK)) + 1
    speech = np.zeros(n, dtype=bool)
    used = np.zeros(n, dtype=bool)
    for s in spans:
        speech[round(s.start / TICK) : round(s.end / TICK)] = True
    for a, b in clips:
        used[max(0, round(a / TICK)) : round(b / TICK)] = True
    return round(float((speech & used).sum()) * TICK, 3), round(float(speech.sum()) * TICK, 3)
