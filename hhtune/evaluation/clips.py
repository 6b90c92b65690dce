"""A generated or training clip as arrays: the frames at the contract's frame rate and the sound as mono."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import FPS, SPEECH_SAMPLE_RATE
from ..media import FrameReader, probe, read_audio


@dataclass(frozen=True)
class AVClip:
    """One clip: what the metrics read."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB at contract FPS (25)
    audio: np.ndarray  # [N] float32 mono in [-1, 1]
    sample_rate: int
    label: str = ""


def read_av_clip(path: str | Path, sample_rate: int = SPEECH_SAMPLE_RATE) -> AVClip:
    """An mp4 (or any file PyAV reads) with sound: every frame at 25 fps and the audio as mono at ``sample_rate``.

    16 kHz by default, the rate the speech models read. Raises :class:`hhtune.media.MediaError` for a file
    without frames or sound.
    """
    info = probe(path)
    reader = FrameReader(path, info)
    try:
        frames = reader.read(0.0, max(1, round(info.duration * FPS)))
    finally:
        reader.close()
    audio = np.clip(read_audio(path, sample_rate), -1.0, 1.0).astype(np.float32)
    return AVClip(frames=frames, audio=audio, sample_rate=sample_rate, label=Path(path).stem)
