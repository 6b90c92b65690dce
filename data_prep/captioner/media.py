"""What a captioner sees and hears of one clip: frames sampled evenly across it, and its sound as 16 kHz mono."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np

from hhtune.contract import AUDIO_SAMPLE_RATE, SPEECH_SAMPLE_RATE


class CaptionerError(ValueError):
    """The captioner cannot be used (not a supported model, an endpoint that does not answer)."""


@dataclass(frozen=True)
class ClipMedia:
    """``frames``: RGB ``uint8`` ``[H, W, 3]`` in time order; ``audio``: 16 kHz mono float32 (``None``: silent)."""

    frames: list[np.ndarray]
    audio: np.ndarray | None


def load_clip_media(npz: Path, n_frames: int) -> ClipMedia:
    """Frames and sound of a cut clip (``.work/clips/<id>.npz``: frames at 25 fps, 51200 Hz stereo audio)."""
    with np.load(npz) as data:
        frames = data["frames"]
        audio = data["audio"] if "audio" in data else None
    picks = np.minimum(len(frames) - 1, ((np.arange(n_frames) + 0.5) * len(frames) / n_frames).astype(int))
    mono = None
    if audio is not None and audio.size and np.abs(audio).max() > 0:
        wave = audio.mean(axis=0) if audio.ndim == 2 else audio
        mono = librosa.resample(np.asarray(wave, np.float32), orig_sr=AUDIO_SAMPLE_RATE, target_sr=SPEECH_SAMPLE_RATE,
                                res_type="soxr_hq").astype(np.float32)  # fmt: skip
    return ClipMedia([frames[i] for i in sorted(set(picks.tolist()))], mono)


def clip_digest(npz: Path) -> str:
    """A hash of a cut clip's pixels and sound (the content part of the caption cache key)."""
    with np.load(npz) as data:
        h = hashlib.sha256(np.ascontiguousarray(data["frames"]).tobytes())
        if "audio" in data:
            h.update(np.ascontiguousarray(data["audio"]).tobytes())
    return h.hexdigest()[:24]


__all__ = ["CaptionerError", "ClipMedia", "clip_digest", "load_clip_media"]
