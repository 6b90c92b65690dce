"""Lip-sync at the mouth: how far the mouth opens in each frame (face landmarks, :mod:`hhtune.face`) against
the loudness of the speech, cross-correlated over a range of offsets (:func:`hhtune.sampling.metrics.mouth_sync`,
the measure validation logs during training too).

The offset with the highest correlation is where the picture and sound line up; the confidence is that peak
minus the median over all offsets (as SyncNet reports it), so a mouth that does not follow the sound, or does
not move, scores near 0. A frame where no face is found is left out of the correlation and counted.
"""

from __future__ import annotations

from dataclasses import asdict

from ... import face
from ...sampling.metrics import mouth_sync
from ..clips import AVClip
from .landmarks import clip_landmarks
from .result import MetricResult, unavailable

NAME = "lip_sync"


def lip_sync(clip: AVClip) -> MetricResult:
    """Lip-sync confidence of one clip (the value; higher is better) and the offset in frames.

    ``details``: ``offset_frames`` (positive: picture lags sound), ``confidence``, ``peak_correlation``,
    ``frames``, ``frames_without_face``.
    """
    why = face.available()
    if why:
        return unavailable(NAME, why)
    sync = mouth_sync(clip.audio, clip.sample_rate, face.mouth_openings(clip_landmarks(clip.frames)))
    if sync.confidence is None:
        return MetricResult(NAME, None, {"frames": sync.frames, "frames_without_face": sync.frames_without_face},
                            unavailable=f"a face was found in only {sync.frames - sync.frames_without_face} "
                            f"of {sync.frames} frames")  # fmt: skip
    return MetricResult(NAME, sync.confidence, asdict(sync))
