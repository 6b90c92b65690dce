"""The two samplers, independent of the model: they call ``velocity_fn(video, audio) -> (v_video, v_audio)``.

* :func:`sample_distilled` — 8 steps, no CFG: ``x0 = x_t - sigma_i * v`` then
  ``x_{i+1} = sigma_{i+1} * fresh_noise + (1 - sigma_{i+1}) * x0`` for video and audio
  (the official ``step_ddim`` path taken when ``cfg_number == 1``).
* :func:`sample_base` — 32 flow-UniPC steps with CFG. diffusers' ``UniPCMultistepScheduler``
  given the official unshifted times reproduces the official sigmas (to 6e-8) and integer
  timesteps exactly, so it is used rather than a copy of the official scheduler. As
  upstream, the video guidance drops to 2.0 once the timestep is at or below 500.

Both pin the first video latent frame to ``reference_first_frame`` before every model
call and at the end (image-to-video), and leave ``fixed_audio`` untouched (audio-to-video).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
SIGMA_MAX = 0.999  # the official scheduler's first unshifted time (t = 999 / 1000)


def official_sigmas(steps: int, shift: float = 5.0) -> Tensor:
    """``steps + 1`` sigmas, from ~1 down to 0: shifted ``linspace(0.999, 0, steps + 1)``."""
    t = torch.linspace(SIGMA_MAX, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def _start(shape: tuple[int, ...], generator: torch.Generator, device) -> Tensor:
    return torch.randn(shape, generator=generator).to(device)


def _pin(video: Tensor, reference: Tensor | None) -> Tensor:
    if reference is not None:
        video = video.clone()
        video[:, :, :1] = reference.to(video)
    return video


def sample_distilled(
    velocity_fn: VelocityFn,
    video_shape: tuple[int, ...],
    audio_shape: tuple[int, ...],
    *,
    steps: int = 8,
    shift: float = 5.0,
    generator: torch.Generator,
    reference_first_frame: Tensor | None = None,
    fixed_audio: Tensor | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Few-step sampling of the distilled model (no guidance). Returns ``(video, audio)`` latents."""
    sigmas = official_sigmas(steps, shift)
    video = _start(video_shape, generator, device)
    audio = fixed_audio.to(device) if fixed_audio is not None else _start(audio_shape, generator, device)
    for i in range(steps):
        video = _pin(video, reference_first_frame)
        v_video, v_audio = velocity_fn(video, audio)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = video - s * v_video
        video = s_next * _start(video.shape, generator, device) + (1 - s_next) * x0
        if fixed_audio is None:
            a0 = audio - s * v_audio
            audio = s_next * _start(audio.shape, generator, device) + (1 - s_next) * a0
        if callback is not None:
            callback(i)
    return _pin(video, reference_first_frame), audio


def sample_base(
    velocity_fn: VelocityFn,
    uncond_velocity_fn: VelocityFn,
    video_shape: tuple[int, ...],
    audio_shape: tuple[int, ...],
    *,
    steps: int = 32,
    shift: float = 5.0,
    video_guidance: float = 5.0,
    audio_guidance: float = 5.0,
    late_video_guidance: float = 2.0,
    generator: torch.Generator,
    reference_first_frame: Tensor | None = None,
    fixed_audio: Tensor | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Flow-UniPC sampling of the base model with classifier-free guidance per modality."""
    from diffusers import UniPCMultistepScheduler  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only the base-model sampler needs it

    def scheduler():
        s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                    solver_order=2, predict_x0=True, final_sigmas_type="zero")  # fmt: skip
        s.set_timesteps(sigmas=np.linspace(SIGMA_MAX, 0.0, steps + 1)[:-1], device=device)
        return s

    video_sched, audio_sched = scheduler(), scheduler()
    video = _start(video_shape, generator, device)
    audio = fixed_audio.to(device) if fixed_audio is not None else _start(audio_shape, generator, device)
    for i, t in enumerate(video_sched.timesteps):
        video = _pin(video, reference_first_frame)
        cv, ca = velocity_fn(video, audio)
        uv, ua = uncond_velocity_fn(video, audio)
        gv = video_guidance if int(t) > 500 else late_video_guidance
        v_video = uv + gv * (cv - uv)
        v_audio = ua + audio_guidance * (ca - ua)
        video = video_sched.step(v_video, t, video, return_dict=False)[0]
        if fixed_audio is None:
            audio = audio_sched.step(v_audio, t, audio, return_dict=False)[0]
        if callback is not None:
            callback(i)
    return _pin(video, reference_first_frame), audio
