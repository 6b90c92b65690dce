"""Evaluation samples through the validation pipeline, with its VAEs loaded once for every clip."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from adapter_helpers import base_model

from hhtune.encoders import build_tiny_encoders
from hhtune.evaluation import sampling
from hhtune.evaluation.sampling import Decoders, SampleSettings, sample_variant
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, generate


def test_clips_decode_as_generate_decodes_them_from_one_vae_load(tmp_path, monkeypatch):
    paths = build_tiny_encoders(tmp_path / "enc")
    model = base_model(0).eval()
    feats = [(torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3)), 4)]
    loads = []
    real = sampling.load_video_vae
    monkeypatch.setattr(sampling, "load_video_vae", lambda *a, **k: loads.append(1) or real(*a, **k))
    settings = SampleSettings(seconds=0.2, base_resolution=32)
    got = sample_variant(model, "base", feats, (0, 1), decoders=Decoders(paths), settings=settings,
                         out_dir=tmp_path / "v")  # fmt: skip
    assert loads == [1]  # one load for both clips
    want = generate(model, "", paths, seconds=0.2, base_resolution=32, seed=1, text_features=feats[0])
    clip = got[1].clip
    assert np.array_equal(clip.frames, want.frames) and clip.sample_rate == OUTPUT_AUDIO_RATE
    assert np.allclose(clip.audio, want.audio.mean(axis=1), atol=1e-6)
    assert got[1].mp4.is_file() and torch.equal(got[1].video_latents, want.video_latents)
