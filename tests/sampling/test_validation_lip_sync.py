"""Validation measures lip-sync at the mouth: on a talking face whose mouth lags the sound by a known offset."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly
from talking_face import talking_clip

from hhtune.encoders import EncoderPaths
from hhtune.sampling import validation
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, Generated


def test_validation_logs_the_mouth_level_lip_sync_of_a_talking_face(monkeypatch, tmp_path):
    pytest.importorskip("skimage")
    torch = pytest.importorskip("torch")
    frames, audio = talking_clip(3)  # 16 kHz; the picture 3 frames behind the sound
    stereo = np.repeat(resample_poly(audio, OUTPUT_AUDIO_RATE // 100, 160)[:, None], 2, axis=1).astype(np.float32)
    clip = Generated(torch.zeros(1, 48, 1, 2, 2), torch.zeros(1, 16, 2), frames, stereo)
    monkeypatch.setattr(validation, "render", lambda *_a, **_k: clip)  # the model "drew" the talking face
    paths = EncoderPaths(video_vae="v", audio_vae="a", text_encoder="t")  # not read: render is replaced
    scores = validation.run_validation(torch.nn.Linear(1, 1), ["a host talks"], encoders=paths, out_dir=tmp_path,
                                       step=1, seed=0)  # fmt: skip
    assert scores["lip_sync_frames_without_face"] == 0
    assert abs(scores["lip_sync_offset_frames"] - 3) <= 1 and scores["lip_sync_confidence"] > 0.5
