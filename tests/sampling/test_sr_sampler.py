"""The super-resolution sampler against the official SR stage (``tests/fixtures/official_sr.json``, written from the
official code by ``make_official_sr_fixture.py``) and against closed-form velocities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from make_official_sr_fixture import cond_field, uncond_field

from hhtune.contract import sr_size
from hhtune.sampling.samplers import SR_NOISE_VALUE, official_sigmas, sample_super_resolution, zero_snr_signal

OFFICIAL = json.loads((Path(__file__).parents[1] / "fixtures" / "official_sr.json").read_text())
TRAJ = OFFICIAL["trajectory"]


def test_sr_schedule_is_the_official_five_steps():
    fixture = OFFICIAL["sr_steps_5_shift_5"]
    torch.testing.assert_close(official_sigmas(5, 5.0), torch.tensor(fixture["sigmas"]), atol=1e-6, rtol=0)
    sig = official_sigmas(5, 5.0)[:-1].double().numpy()
    assert (sig * 1000).astype(np.int64).tolist() == fixture["timesteps"] == [999, 952, 882, 768, 555]


def test_zero_snr_signal_is_the_official_table():
    """The official table, re-derived: sqrt(alpha_bar) of the scaled-linear betas, rescaled to reach 0 at 999."""
    for index, value in OFFICIAL["zero_snr_signal"].items():
        assert abs(zero_snr_signal(int(index)) - value) < 1e-7, index
    assert SR_NOISE_VALUE == 220 and abs(zero_snr_signal(220) - 0.83891) < 1e-5


def _inputs(pinned: bool):
    gen = torch.Generator().manual_seed(0)
    video, audio = torch.randn(TRAJ["base_video"], generator=gen), torch.randn(TRAJ["base_audio"], generator=gen)
    reference = torch.randn(1, TRAJ["base_video"][1], 1, *TRAJ["sr_hw"], generator=gen) if pinned else None
    return video, audio, reference


@pytest.mark.parametrize("run", TRAJ["runs"], ids=lambda r: f"guided={r['guided']},pinned={r['pinned']}")
def test_trajectory_matches_the_official_sr_stage_step_by_step(run, monkeypatch):
    """Upsampling, re-noising, the noisy audio the model hears, guidance with the CFG trick, pinning and every UniPC
    step, against the official code replayed with the same closed-form fields and noise."""
    from diffusers import UniPCMultistepScheduler

    video, audio, reference = _inputs(run["pinned"])
    heard, states = [], []
    real_step = UniPCMultistepScheduler.step

    def recording_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        states.append(out[0].clone())
        return out

    monkeypatch.setattr(UniPCMultistepScheduler, "step", recording_step)

    def cond(v, a):
        heard.append(a.clone())
        return cond_field(v, a), torch.zeros_like(a)

    out_v, out_a = sample_super_resolution(
        cond, video, audio, tuple(TRAJ["sr_hw"]), uncond_velocity_fn=(lambda v, a: (uncond_field(v, a), a))
        if run["guided"] else None, noise_value=TRAJ["noise_value"], audio_noise_scale=TRAJ["audio_noise_scale"],
        video_guidance=TRAJ["guidance"], cfg_trick_frames=TRAJ["cfg_trick_frames"],
        cfg_trick_guidance=TRAJ["cfg_trick_value"], generator=torch.Generator().manual_seed(TRAJ["seed"]),
        reference_first_frame=reference)  # fmt: skip
    assert len(states) == 5 and len(heard) == 5
    for i, (got, want) in enumerate(zip(states, run["states"])):
        torch.testing.assert_close(got.flatten(), torch.tensor(want), atol=2e-5, rtol=1e-5, msg=f"step {i}")
    torch.testing.assert_close(out_v.flatten(), torch.tensor(run["final"]), atol=2e-5, rtol=1e-5)
    assert all(torch.allclose(a.flatten(), torch.tensor(run["noisy_audio"]), atol=1e-6) for a in heard)
    assert torch.equal(out_a, audio)  # what ships is the base audio, not the noisy one the SR model hears
    assert out_v.shape == (*TRAJ["base_video"][:3], *TRAJ["sr_hw"])


def test_a_perfect_model_lands_on_the_target():
    """A field that is the exact velocity towards a known x0 at every sigma of the schedule, v = (x - x0) / sigma,
    lands on x0: UniPC's last step returns its data prediction. Whatever the re-noising put in the start."""
    x0 = torch.randn(1, 4, 3, 6, 8)
    sigmas = official_sigmas(5).tolist()
    calls = []

    def fn(video, audio):
        s = sigmas[len(calls)]
        calls.append(video)
        return (video - x0) / s, audio

    out_v, _ = sample_super_resolution(fn, torch.randn(1, 4, 3, 3, 4), torch.randn(1, 9, 6), (6, 8),
                                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(calls) == 5
    torch.testing.assert_close(out_v, x0, atol=1e-4, rtol=0)


def test_start_is_the_upsampled_latent_renoised_at_noise_value():
    """The first model input is ``signal * trilinear(base) + sqrt(1 - signal^2) * n`` with standard-normal n; an
    upsampling of a latent constant along an axis stays constant, and corners are kept (align_corners)."""
    base = torch.randn(1, 2, 2, 3, 4)
    seen = []

    def fn(video, audio):
        seen.append(video.clone())
        return torch.zeros_like(video), audio

    sample_super_resolution(fn, base, torch.zeros(1, 9, 6), (9, 16), noise_value=0,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    up = seen[0]
    assert up.shape == (1, 2, 2, 9, 16)
    torch.testing.assert_close(up[..., ::4, ::5], base)  # align_corners: the base grid points are kept exactly
    ref = torch.nn.functional.interpolate(base, size=(2, 9, 16), mode="trilinear", align_corners=True)
    torch.testing.assert_close(up, ref)
    seen.clear()
    sample_super_resolution(fn, base, torch.zeros(1, 9, 6), (90, 160), generator=torch.Generator().manual_seed(0))
    big = torch.nn.functional.interpolate(base, size=(2, 90, 160), mode="trilinear", align_corners=True)
    s = zero_snr_signal(220)
    noise = (seen[0] - s * big) / (1 - s**2) ** 0.5
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02


def test_cfg_trick_lowers_guidance_on_the_first_latent_frames_only(monkeypatch):
    """cond = 1, uncond = 0: the guided velocity handed to UniPC is the guidance itself, frame by frame."""
    from diffusers import UniPCMultistepScheduler

    seen = []
    real_step = UniPCMultistepScheduler.step

    def recording_step(self, model_output, *args, **kwargs):
        seen.append(model_output[0, 0, :, 0, 0].tolist())
        return real_step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(UniPCMultistepScheduler, "step", recording_step)
    cond, uncond = (lambda v, a: (torch.ones_like(v), a)), (lambda v, a: (torch.zeros_like(v), a))
    for trick in (2.0, None):
        sample_super_resolution(cond, torch.zeros(1, 2, 16, 2, 2), torch.zeros(1, 61, 6), (2, 2),
                                uncond_velocity_fn=uncond, cfg_trick_guidance=trick,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert seen[0] == [2.0] * 13 + [3.5] * 3 and all(s == seen[0] for s in seen[:5])
    assert seen[5] == [3.5] * 16 and len(seen) == 10


def test_sr_sizes_scale_the_base_size_by_the_official_ratio():
    """At 256 rows the official examples render 512 (540p) and 1088 (1080p); the tiny preset's 64 rows scale alike."""
    assert sr_size("16:9", 256, "540p") == (960, 512) and sr_size("16:9", 256, "1080p") == (2048, 1088)
    assert sr_size("9:16", 256, "1080p") == (1088, 2048) and sr_size("1:1", 64, "1080p") == (288, 288)
    assert sr_size("16:9", 64, "1080p") == (544, 288) and sr_size("16:9", 64, "540p") == (256, 128)
    with pytest.raises(ValueError, match="unknown super-resolution '720p'"):
        sr_size("16:9", 256, "720p")
