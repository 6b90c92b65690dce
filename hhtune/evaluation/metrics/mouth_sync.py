"""Lip-sync at the mouth: how far the mouth opens in each frame (face landmarks, :mod:`hhtune.face`) against
the loudness of the speech, cross-correlated over a range of offsets.

The offset with the highest correlation is where the picture and sound line up; the confidence is that peak
minus the median over all offsets (as SyncNet reports it), so a mouth that does not follow the sound, or does
not move, scores near 0. A frame where no face is found is left out of the correlation and counted.
"""

from __future__ import annotations

import numpy as np

from ... import face
from ...contract import FPS
from ..clips import AVClip
from .result import MetricResult, unavailable

NAME = "lip_sync"
MAX_OFFSET = 10  # frames each way (0.4 s at 25 fps)
_MIN_FRAMES = 8  # overlapping frames with a face an offset needs to be scored
# Mouth opening (inner-lip gap over eye distance) varies this much on a still face: landmark jitter. A mouth
# that moves less is scaled as if it moved this much, so jitter cannot correlate its way to a high confidence.
MOUTH_NOISE = 0.02


def speech_envelope(audio: np.ndarray, sample_rate: int, frames: int, fps: int = FPS) -> np.ndarray:
    """RMS loudness of the audio over each video frame's span, ``[frames]`` (0 past the end of the audio)."""
    hop = sample_rate / fps
    out = np.zeros(frames, dtype=np.float32)
    for i in range(frames):
        chunk = audio[round(i * hop) : round((i + 1) * hop)]
        out[i] = np.sqrt(np.mean(np.square(chunk, dtype=np.float64))) if len(chunk) else 0.0
    return out


def _z(x: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), floor)


def sync_offset(envelope: np.ndarray, mouth: np.ndarray, max_offset: int = MAX_OFFSET) -> tuple[int, float, float]:
    """``(offset, confidence, peak)`` between a speech envelope and mouth opening per frame (``NaN``: no face).

    Positive offset: the picture lags the sound (``mouth[t + offset]`` follows ``envelope[t]``). ``peak`` is
    the highest normalised correlation (a mouth moving less than :data:`MOUTH_NOISE` counts as that much);
    ``confidence`` is the peak minus the median over offsets.
    Returns ``(0, 0.0, 0.0)`` when no offset has enough frames to compare.
    """
    n = min(len(envelope), len(mouth))
    scores = {}
    for k in range(-max_offset, max_offset + 1):
        a, b = (envelope[: n - k], mouth[k:n]) if k >= 0 else (envelope[-k:n], mouth[: n + k])
        keep = np.isfinite(b)
        if keep.sum() >= _MIN_FRAMES:
            scores[k] = float(np.mean(_z(a[keep]) * _z(b[keep], MOUTH_NOISE)))
    if not scores:
        return 0, 0.0, 0.0
    best = max(scores, key=scores.get)
    return best, float(scores[best] - np.median(list(scores.values()))), scores[best]


def lip_sync(clip: AVClip) -> MetricResult:
    """Lip-sync confidence of one clip (the value; higher is better) and the offset in frames.

    ``details``: ``offset_frames`` (positive: picture lags sound), ``confidence``, ``peak_correlation``,
    ``frames``, ``frames_without_face``.
    """
    why = face.available()
    if why:
        return unavailable(NAME, why)
    mouth = face.mouth_opening(clip.frames)
    env = speech_envelope(np.asarray(clip.audio, dtype=np.float32), clip.sample_rate, len(mouth))
    missing = int(np.isnan(mouth).sum())
    details: dict = {"frames": len(mouth), "frames_without_face": missing}
    if len(mouth) - missing < _MIN_FRAMES:
        return MetricResult(NAME, None, details, unavailable=f"a face was found in only {len(mouth) - missing} "
                            f"of {len(mouth)} frames")  # fmt: skip
    offset, confidence, peak = sync_offset(env, mouth)
    details.update(offset_frames=offset, confidence=confidence, peak_correlation=peak)
    return MetricResult(NAME, confidence, details)
