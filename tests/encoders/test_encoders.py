"""Encoders from local folders: strides, normalisation, padding, fingerprints and errors."""

from __future__ import annotations

import pytest
import torch

from hhtune.encoders import (EncoderError, build_tiny_encoders, encoders_fingerprint, load_audio_vae,
                             load_text_encoder, load_video_vae)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_encoders(tmp_path_factory.mktemp("enc"), seed=0)


def test_video_vae_stride_and_round_trip_shapes(tiny):
    vae = load_video_vae(tiny.video_vae)
    frames = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    z = vae.encode(frames)
    assert z.shape == (1, 48, 3, 4, 6)
    assert vae.decode(z).shape == (1, 3, 9, 64, 96)
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(frames[:, :, :8])


def test_video_normalisation_is_the_official_per_channel_mean_std(tiny):
    vae = load_video_vae(tiny.video_vae)
    mu = torch.randn(1, 48, 2, 3, 3)
    mean = torch.tensor(vae.model.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.model.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(vae.normalise(mu), (mu - mean) / std)
    torch.testing.assert_close(vae.denormalise(vae.normalise(mu)), mu)
    frames = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    raw = vae.model.encode(frames).latent_dist.mode()
    torch.testing.assert_close(vae.encode(frames), (raw - mean) / std)


def test_audio_vae_runs_at_25_latents_per_second(tiny):
    vae = load_audio_vae(tiny.audio_vae)
    assert vae.sample_rate == 51200
    z = vae.encode(torch.randn(2, 2, 51200))
    assert z.shape == (2, 25, 64)
    assert vae.decode(z).shape == (2, 2, 51200)


def test_text_encoder_pads_to_640_with_real_lengths(tiny):
    enc = load_text_encoder(tiny.text_encoder)
    feats, lengths = enc.encode(["hello", "a presenter speaks to the camera"])
    assert feats.shape == (2, 640, 32) and enc.hidden_size == 32
    assert lengths[0] < lengths[1]
    assert feats[0, lengths[0] :].abs().sum() == 0 and feats[0, : lengths[0]].abs().sum() > 0
    short = load_text_encoder(tiny.text_encoder, max_length=3)
    f, n = short.encode(["a presenter speaks to the camera"])
    assert f.shape == (1, 3, 32) and int(n[0]) == 3


def test_fingerprint_is_stable_and_sensitive(tiny, tmp_path):
    assert encoders_fingerprint(tiny) == encoders_fingerprint(tiny)
    other = build_tiny_encoders(tmp_path / "other", seed=1)
    assert encoders_fingerprint(other) != encoders_fingerprint(tiny)


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(EncoderError, match="video VAE not found at .*config.json"):
        load_video_vae(tmp_path)
    with pytest.raises(EncoderError, match="audio VAE not found"):
        load_audio_vae(tmp_path / "nope")
    with pytest.raises(EncoderError, match="text encoder not found"):
        load_text_encoder(tmp_path)
