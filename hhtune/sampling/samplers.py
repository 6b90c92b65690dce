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

* :func:`sample_super_resolution` — the second stage of the official pipeline (``MagiEvaluator.evaluate``): the
  base stage's video latent upsampled trilinearly to the SR grid, re-noised to the ZeroSNR-DDPM signal level of
  ``noise_value`` (:func:`zero_snr_signal`), then 5 flow-UniPC steps over the full schedule. The SR model hears
  the base audio mixed with fresh noise (``audio_noise_scale``) and never changes it: the base audio is what
  ships. With an unconditional field the video guidance is ``video_guidance``, and the CFG trick lowers it to
  ``cfg_trick_guidance`` on the first ``cfg_trick_frames`` latent frames (the official remedy for over-exposure
  in image-to-video); the published SR examples run without guidance (``sr_cfg_number = 1``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
SIGMA_MAX = 0.999  # the official scheduler's first unshifted time (t = 999 / 1000)
# The official SR stage (``EvaluationConfig``): steps, re-noising level, audio noise, guidance and its CFG trick.
SR_STEPS, SR_NOISE_VALUE, SR_AUDIO_NOISE_SCALE = 5, 220, 0.7
SR_VIDEO_GUIDANCE, SR_CFG_TRICK_FRAMES, SR_CFG_TRICK_GUIDANCE = 3.5, 13, 2.0


def official_sigmas(steps: int, shift: float = 5.0) -> Tensor:
    """``steps + 1`` sigmas, from ~1 down to 0: shifted ``linspace(0.999, 0, steps + 1)``."""
    t = torch.linspace(SIGMA_MAX, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def zero_snr_signal(index: int, timesteps: int = 1000) -> float:
    """The signal coefficient ``sqrt(alpha_bar)`` at DDPM ``index`` of the official ``ZeroSNRDDPMDiscretization``.

    Betas are ``linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2``; ``sqrt(cumprod(1 - beta))`` is shifted and scaled
    so that it runs from its first value exactly to 0 at the last index (zero terminal SNR). The SR stage mixes
    ``signal * x + sqrt(1 - signal**2) * noise`` with ``index = noise_value``.
    """
    betas = np.linspace(0.00085**0.5, 0.012**0.5, timesteps, dtype=np.float64) ** 2
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    return float((root[index] - last) * first / (first - last))


def upsample(lr_video: Tensor, size: tuple[int, int]) -> Tensor:
    """Base-size latents ``[B, C, T, h, w]`` upsampled to ``size`` ``(H, W)`` as the SR stage does (trilinear,
    corners aligned, frames kept)."""
    return torch.nn.functional.interpolate(lr_video.float(), size=(lr_video.shape[2], *size), mode="trilinear",
                                           align_corners=True)  # fmt: skip


def renoise(video: Tensor, noise: Tensor, noise_value: int = SR_NOISE_VALUE) -> Tensor:
    """``video`` mixed with ``noise`` at the ZeroSNR-DDPM signal level of ``noise_value`` (unchanged at 0)."""
    if not noise_value:
        return video
    signal = zero_snr_signal(noise_value)
    return signal * video + (1 - signal**2) ** 0.5 * noise


def sr_heard_audio(audio: Tensor, noise: Tensor, scale: float = SR_AUDIO_NOISE_SCALE) -> Tensor:
    """The audio the SR model hears: the base audio mixed with ``noise`` (``scale`` of noise)."""
    return noise * scale + audio * (1 - scale)


def _unipc(steps: int, shift: float, device: str | torch.device = "cpu"):
    """A fresh flow-UniPC scheduler (order 2, data prediction) over the official ``steps``-step schedule."""
    from diffusers import UniPCMultistepScheduler  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only the UniPC samplers need it

    s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                solver_order=2, predict_x0=True, final_sigmas_type="zero")  # fmt: skip
    s.set_timesteps(sigmas=np.linspace(SIGMA_MAX, 0.0, steps + 1)[:-1], device=device)
    return s


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
    video_sched, audio_sched = _unipc(steps, shift, device), _unipc(steps, shift, device)
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


def sample_super_resolution(
    velocity_fn: VelocityFn,
    base_video: Tensor,
    base_audio: Tensor,
    latent_size: tuple[int, int],
    *,
    uncond_velocity_fn: VelocityFn | None = None,
    steps: int = SR_STEPS,
    shift: float = 5.0,
    noise_value: int = SR_NOISE_VALUE,
    audio_noise_scale: float = SR_AUDIO_NOISE_SCALE,
    video_guidance: float = SR_VIDEO_GUIDANCE,
    cfg_trick_frames: int = SR_CFG_TRICK_FRAMES,
    cfg_trick_guidance: float | None = SR_CFG_TRICK_GUIDANCE,
    generator: torch.Generator,
    reference_first_frame: Tensor | None = None,
    callback: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Refine the base stage's ``(video, audio)`` latents at ``latent_size`` ``(H, W)``; returns ``(video, audio)``.

    ``base_video`` is ``[B, C, T, h, w]``; the result is ``[B, C, T, H, W]`` and the base audio, unchanged.
    ``reference_first_frame`` is the reference image encoded at the SR size. ``cfg_trick_guidance=None`` turns
    the CFG trick off. The noise is drawn from ``generator``: the video's, then the audio's.
    """
    device = base_video.device
    video = upsample(base_video, latent_size)
    if noise_value:
        video = renoise(video, _start(video.shape, generator, device), noise_value)
    heard = sr_heard_audio(base_audio, _start(base_audio.shape, generator, device), audio_noise_scale)
    guidance = torch.full((1, 1, video.shape[2], 1, 1), video_guidance, device=device)
    if cfg_trick_guidance is not None:
        guidance[:, :, :cfg_trick_frames] = min(cfg_trick_guidance, video_guidance)
    scheduler = _unipc(steps, shift, device)
    for i, t in enumerate(scheduler.timesteps):
        video = _pin(video, reference_first_frame)
        v_video, _ = velocity_fn(video, heard)
        if uncond_velocity_fn is not None:
            u_video, _ = uncond_velocity_fn(video, heard)
            v_video = u_video + guidance * (v_video - u_video)
        video = scheduler.step(v_video, t, video, return_dict=False)[0]
        if callback is not None:
            callback(i)
    return _pin(video, reference_first_frame), base_audio
