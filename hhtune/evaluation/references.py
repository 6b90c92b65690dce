"""The training footage the samples are compared against: the dataset's clips, cut from their source files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import FPS
from .clips import AVClip, read_av_clip

MAX_REFERENCES = 16  # clips read from the footage (evenly spread over the dataset): enough for identity means


def training_references(ds, manifest: dict, limit: int = MAX_REFERENCES) -> tuple[list[AVClip], str | None]:
    """Up to ``limit`` training clips as :class:`AVClip` from the dataset ``ds`` (its manifest names the footage).

    Returns ``(clips, None)``, or ``([], why)`` when the footage is not on this machine.
    """
    footage = manifest.get("footage")
    if not footage or not Path(footage).is_dir():
        return [], (f"the training footage folder ({footage or 'not recorded in the dataset manifest'}) "
                    "is not on this machine")
    rows = ds.select_columns(["source_file", "start_s", "end_s"])
    picks = np.unique(np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int)) if len(rows) else []
    clips, missing = [], []
    for i in picks:
        row = rows[int(i)]
        path = Path(footage) / row["source_file"]
        if not path.is_file():
            missing.append(row["source_file"])
            continue
        clips.append(_cut(read_av_clip(path), float(row["start_s"]), float(row["end_s"]), row["source_file"]))
    if not clips:
        return [], f"none of the training clips' source files were found under {footage} (e.g. {missing[:1]})"
    return clips, None


def _cut(clip: AVClip, start: float, end: float, label: str) -> AVClip:
    """The ``[start, end)`` seconds of ``clip`` (25 fps video, audio at its own rate)."""
    f0, f1 = round(start * FPS), max(round(end * FPS), round(start * FPS) + 1)
    a0, a1 = round(start * clip.sample_rate), round(end * clip.sample_rate)
    return AVClip(frames=clip.frames[f0:f1], audio=clip.audio[a0:a1], sample_rate=clip.sample_rate, label=label)
