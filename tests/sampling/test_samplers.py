"""Samplers against the official schedule and against closed-form velocities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def _official_schedule(steps: int, shift: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Sigmas and integer timesteps as the official FlowUniPCMultistepScheduler derives them, written out here.

    Its training sigmas are ``1 - linspace(1, 1/1000, 1000)[::-1]`` (from 0.999 down to 0); ``set_timesteps``
    spaces ``steps`` of them linearly from the largest to the smallest, drops the last, applies the shift
    ``s * t / (1 + (s - 1) * t)``, truncates ``1000 * sigma`` to int64 timesteps and appends sigma 0.
    """
    train = 1.0 - np.linspace(1, 1 / 1000, 1000)[::-1]
    t = np.linspace(train[0], train[-1], steps + 1)[:-1]
    sig = shift * t / (1 + (shift - 1) * t)
    return np.concatenate([sig, [0.0]]).astype(np.float32), (sig * 1000).astype(np.int64)


@pytest.mark.parametrize("steps", [8, 32])
def test_official_formulas_give_the_fixture_sigmas_and_timesteps(steps):
    sig, ts = _official_schedule(steps)
    fixture = SCHED[f"steps_{steps}_shift_5"]
    np.testing.assert_allclose(sig, fixture["sigmas"], atol=1e-6, rtol=0)
    assert ts.tolist() == [int(t) for t in fixture["timesteps"]]


def test_distilled_trajectory_follows_the_official_step_ddim():
    """Official ``step_ddim``: ``x0 = x - sigma_i v``; ``x' = sigma_{i+1} n + (1 - sigma_{i+1}) x0`` with fresh noise n.

    Two runs with the same seed and different velocity fields draw the same noise, so their difference
    follows the deterministic part alone: ``d' = (1 - sigma_{i+1}) (x0_a - x0_b)``, checked at every step
    with the fixture's sigmas. What is left, ``x' - (1 - sigma_{i+1}) x0``, is ``sigma_{i+1}`` times the
    shared standard-normal noise (zero at the last step).
    """
    sigmas = SCHED["steps_8_shift_5"]["sigmas"]
    runs = []
    for scale in (0.5, -1.5):
        states = []

        def fn(video, audio, scale=scale, states=states):
            states.append((video.clone(), audio.clone()))
            return scale * video + 0.1, -0.25 * scale * audio

        out = sample_distilled(fn, V, A, steps=8, generator=torch.Generator().manual_seed(3))
        states.append(out)
        runs.append((scale, states))
    assert all(len(states) == 9 for _, states in runs)  # 8 model calls, then the result
    (sa, xa), (sb, xb) = runs
    for i in range(8):
        s, s_next = sigmas[i], sigmas[i + 1]
        for m, (va, vb) in enumerate(((sa * xa[i][0] + 0.1, sb * xb[i][0] + 0.1),
                                      (-0.25 * sa * xa[i][1], -0.25 * sb * xb[i][1]))):  # fmt: skip
            x0a, x0b = xa[i][m] - s * va, xb[i][m] - s * vb
            torch.testing.assert_close(xa[i + 1][m] - xb[i + 1][m], (1 - s_next) * (x0a - x0b), atol=2e-5, rtol=0)
            noise_a = xa[i + 1][m] - (1 - s_next) * x0a
            noise_b = xb[i + 1][m] - (1 - s_next) * x0b
            torch.testing.assert_close(noise_a, noise_b, atol=2e-5, rtol=0)  # the noise does not depend on v
            if s_next == 0.0:
                assert noise_a.abs().max() < 1e-5
            else:
                n = noise_a / s_next
                assert abs(float(n.mean())) < 0.15 and abs(float(n.std()) - 1) < 0.15, (i, m)


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
    fn = lambda v, a: (0.1 * v, 0.1 * a)
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


def test_base_sampler_guidance_per_modality_switch_at_timestep_500_and_closed_form_landing(monkeypatch):
    """Conditional and unconditional fields are 'perfect models' of different data, a and b.

    CFG gives ``u + g (c - u)``, a perfect model of ``b + g (a - b)``: the video scale is 4 while the
    timestep is above 500 and 2 after (from step 27 of 32, where the fixture's timesteps reach 480),
    the audio scale stays 3. UniPC's last step (to sigma 0) returns its data prediction, so the
    result is ``b + 2 (a - b)`` for video and ``b + 3 (a - b)`` for audio in closed form.
    """
    from diffusers import UniPCMultistepScheduler

    a_v, b_v, a_a, b_a = torch.randn(V), torch.randn(V), torch.randn(A), torch.randn(A)
    sig = SCHED["steps_32_shift_5"]["sigmas"]
    timesteps = [int(t) for t in SCHED["steps_32_shift_5"]["timesteps"]]
    switch = next(i for i, t in enumerate(timesteps) if t <= 500)
    assert switch == 27
    seen: dict[str, list] = {"cond": [], "uncond": [], "video": [], "audio": []}

    def field(target_v, target_a, key):
        def fn(v, a):
            s = sig[len(seen[key])]
            out = (v - target_v) / s, (a - target_a) / s
            seen[key].append(out)
            return out

        return fn

    real_step = UniPCMultistepScheduler.step

    def recording_step(self, model_output, timestep, sample, *args, **kwargs):
        seen["video" if model_output.shape == V else "audio"].append((int(timestep), model_output.clone()))
        return real_step(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(UniPCMultistepScheduler, "step", recording_step)
    out_v, out_a = sample_base(field(a_v, a_a, "cond"), field(b_v, b_a, "uncond"), V, A, steps=32, video_guidance=4.0,
                               audio_guidance=3.0, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [t for t, _ in seen["video"]] == timesteps and [t for t, _ in seen["audio"]] == timesteps
    for i in range(32):
        (cv, ca), (uv, ua) = seen["cond"][i], seen["uncond"][i]
        g = 4.0 if i < switch else 2.0
        torch.testing.assert_close(seen["video"][i][1], uv + g * (cv - uv), msg=f"video guidance at step {i}")
        torch.testing.assert_close(seen["audio"][i][1], ua + 3.0 * (ca - ua), msg=f"audio guidance at step {i}")
    torch.testing.assert_close(out_v, b_v + 2.0 * (a_v - b_v), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_a, b_a + 3.0 * (a_a - b_a), atol=1e-4, rtol=0)
    assert not torch.allclose(out_v, a_v, atol=0.1) and not torch.allclose(out_v, b_v + 4.0 * (a_v - b_v), atol=0.1)


def test_latent_shapes_for_durations_and_aspects():
    v, a, wh = latent_shapes(5.0, "16:9", 256)
    assert v == (1, 48, 32, 16, 30) and a == (1, 125, 64) and wh == (480, 256)
    assert latent_shapes(2.0, "9:16", 256)[2] == (256, 480) and latent_shapes(2.0, "1:1", 256)[0][3:] == (16, 16)
    with pytest.raises(ValueError, match="unknown aspect '2:1'"):
        latent_shapes(1.0, "2:1")
