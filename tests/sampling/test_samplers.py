"""Samplers against the official schedule and against closed-form velocities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hhtune.sampling import official_sigmas, sample_base, sample_distilled
from hhtune.sampling.generate import latent_shapes

SCHED = json.loads((Path(__file__).parents[1] / "fixtures" / "official_schedules.json").read_text())
V, A = (1, 48, 3, 2, 4), (1, 9, 64)


@pytest.mark.parametrize("steps", [8, 32])
def test_sigmas_match_the_official_schedule(steps):
    ref = torch.tensor(SCHED[f"steps_{steps}_shift_5"]["sigmas"])
    torch.testing.assert_close(official_sigmas(steps, 5.0), ref, atol=1e-6, rtol=0)


def test_distilled_update_rule_by_hand():
    """Re-run the update rule by hand with a velocity known in closed form, noise drawn from the same generator."""
    calls = []

    def fn(video, audio):
        calls.append((video.clone(), audio.clone()))
        return 0.5 * video, -0.25 * audio

    out_v, out_a = sample_distilled(fn, V, A, steps=8, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    s = official_sigmas(8)
    v, a = torch.randn(V, generator=g), torch.randn(A, generator=g)
    for i in range(8):
        torch.testing.assert_close(calls[i][0], v)
        x0v, x0a = v - float(s[i]) * 0.5 * v, a - float(s[i]) * (-0.25) * a
        v = float(s[i + 1]) * torch.randn(V, generator=g) + (1 - float(s[i + 1])) * x0v
        a = float(s[i + 1]) * torch.randn(A, generator=g) + (1 - float(s[i + 1])) * x0a
    torch.testing.assert_close(out_v, v)
    torch.testing.assert_close(out_a, a)


def test_a_perfect_model_lands_on_the_data():
    """With v = noise - x0 exact for a known x0, x0 = x_t - sigma v is exact at every step."""
    x0_v, x0_a = torch.randn(V), torch.randn(A)

    def fn(video, audio):
        # x_t = (1-s) x0 + s n  ->  v = n - x0 = (x_t - x0) / s ; the sampler never calls at s = 0
        s = fn.sigmas[fn.i]
        fn.i += 1
        return (video - x0_v) / s, (audio - x0_a) / s

    fn.sigmas, fn.i = official_sigmas(8).tolist(), 0
    out_v, out_a = sample_distilled(fn, V, A, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_v, x0_v, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_a, x0_a, atol=1e-5, rtol=0)


def test_seeded_runs_repeat_and_differ_across_seeds():
    fn = lambda v, a: (0.1 * v, 0.1 * a)  # noqa: E731
    a = sample_distilled(fn, V, A, generator=torch.Generator().manual_seed(1))
    b = sample_distilled(fn, V, A, generator=torch.Generator().manual_seed(1))
    c = sample_distilled(fn, V, A, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_image_to_video_pins_the_first_frame_and_audio_to_video_keeps_audio():
    ref = torch.randn(1, 48, 1, 2, 4)
    audio = torch.randn(A)
    seen = []

    def fn(v, a):
        seen.append(v[:, :, :1].clone())
        return v, a

    for sampler in ("distilled", "base"):
        seen.clear()
        kwargs = dict(generator=torch.Generator().manual_seed(0), reference_first_frame=ref, fixed_audio=audio)
        if sampler == "distilled":
            out_v, out_a = sample_distilled(fn, V, A, **kwargs)
        else:
            out_v, out_a = sample_base(fn, fn, V, A, steps=6, **kwargs)
        assert all(torch.equal(s, ref) for s in seen) and torch.equal(out_v[:, :, :1], ref)
        assert torch.equal(out_a, audio)


def test_base_sampler_applies_guidance_per_modality_and_lands_on_data():
    x0_v, x0_a = torch.randn(V), torch.randn(A)
    sig = official_sigmas(32).tolist()
    state = {"i": 0}

    def cond(v, a):
        s = sig[state["i"]]
        return (v - x0_v) / s, (a - x0_a) / s

    def uncond(v, a):
        c = cond(v, a)
        state["i"] += 1
        return c  # identical to cond: guidance then changes nothing

    out_v, out_a = sample_base(cond, uncond, V, A, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_v, x0_v, atol=1e-3, rtol=0)
    torch.testing.assert_close(out_a, x0_a, atol=1e-3, rtol=0)


def test_latent_shapes_for_durations_and_aspects():
    v, a, wh = latent_shapes(5.0, "16:9", 256)
    assert v == (1, 48, 32, 16, 30) and a == (1, 125, 64) and wh == (480, 256)
    assert latent_shapes(2.0, "9:16", 256)[2] == (256, 480) and latent_shapes(2.0, "1:1", 256)[0][3:] == (16, 16)
    with pytest.raises(ValueError, match="unknown aspect '2:1'"):
        latent_shapes(1.0, "2:1")
