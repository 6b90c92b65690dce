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
from hhtune.evaluation.sampling import Decoders, SampleSettings, sample_variant, super_resolve_samples
from hhtune.sampling.generate import OUTPUT_AUDIO_RATE, generate
from hhtune.sampling.super_resolution import SrStage, load_stage_model, render


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


def test_sr_clips_equal_the_two_stage_render_at_their_seed(tmp_path):
    """First stage for every variant, then the SR stage for all: each clip is what hhtune.sample --sr renders."""
    paths = build_tiny_encoders(tmp_path / "enc")
    model = base_model(0).eval()
    stage = SrStage("540p", load_stage_model("tiny", sr="540p"))
    feats = [(torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3)), 4),
             (torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(4)), 5)]  # fmt: skip
    settings, decoders = SampleSettings(seconds=0.2, base_resolution=32), Decoders(paths)
    first = sample_variant(model, "base", feats, (0, 1), decoders=decoders, settings=settings, decode=False)
    seen = []
    got = super_resolve_samples(first, stage, feats, decoders=decoders, settings=settings, device="cpu",
                                out_dir=tmp_path / "videos", on_clip=seen.append)  # fmt: skip
    assert [(s.prompt, s.seed) for s in got] == [(0, 0), (0, 1), (1, 0), (1, 1)] and len(seen) == 4
    want = render(model, "", paths, sr=stage, seconds=0.2, base_resolution=32, seed=1, text_features=feats[1])
    clip = got[3].clip
    assert clip.frames.shape[1:3] == (64, 128) and np.array_equal(clip.frames, want.frames)
    assert torch.equal(got[3].video_latents, want.video_latents)
    assert np.allclose(clip.audio, want.audio.mean(axis=1), atol=1e-6)
    assert got[3].mp4 == tmp_path / "videos" / "base" / "p01_s1.mp4" and got[3].mp4.is_file()
