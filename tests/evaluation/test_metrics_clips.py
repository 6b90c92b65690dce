"""Clips read back from an mp4 with sound, as the evaluation reads its samples."""

from __future__ import annotations

import librosa
import numpy as np
from talking_face import RATE, talking_clip

from hhtune.evaluation.clips import read_av_clip
from hhtune.evaluation.metrics import lip_sync
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, write_mp4


def test_a_talking_clip_survives_the_mp4_and_keeps_its_lip_sync(tmp_path):
    frames, audio = talking_clip(2, frames=40)
    path = write_mp4(frames, librosa.resample(audio, orig_sr=RATE, target_sr=OUTPUT_AUDIO_RATE), tmp_path / "talk.mp4")
    clip = read_av_clip(path)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert clip.sample_rate == 16000 and clip.audio.ndim == 1 and np.abs(clip.audio).max() <= 1.0
    assert abs(len(clip.audio) - len(audio)) < RATE // 10 and clip.label == "talk"
    assert np.abs(clip.frames.astype(float) - frames).mean() < 5  # H.264, but the same picture
    r = lip_sync(clip)
    assert abs(r.details["offset_frames"] - 2) <= 1 and r.value > 0.5
