"""The super-resolution objective: what an SR LoRA (``model.variant: sr_540p | sr_1080p``) trains.

It is defined by what the SR DiT sees at inference, in the official second stage
(``MagiEvaluator.evaluate`` in ``inference/pipeline/video_generate.py``), so the adapter is trained on
exactly the inputs it will be run on:

* **Start point.** The base stage's 256p latent is upsampled trilinearly (``align_corners=True``) to the SR
  grid and re-noised at the ZeroSNR-DDPM signal level of ``noise_value = 220``:
  ``z1 = a * up(lr) + sqrt(1 - a**2) * eps`` (:func:`sr_start`, as
  :func:`~hhtune.sampling.samplers.sample_super_resolution` builds it). In training, ``lr`` is the clip's
  own latent at the base size (the dataset's ``video_latents``): a VAE encoding of 256p pixels is what the
  base stage produces and hands over, while the high-resolution latent shrunk in latent space is not (the
  VAE is not linear in pixels), so data_prep encodes the clip at both sizes (``sr_resolution``) rather than
  deriving one from the other.
* **Sigmas.** The SR stage then runs 5 flow-UniPC steps of the *full* shifted schedule (``set_timesteps(5,
  shift=5)``: sigmas 0.9998, 0.952, 0.882, 0.769, 0.555, then 0), treating ``z1`` as its sigma ~1 end.
  ``noise_value`` sets how much noise ``z1`` holds, not where the schedule starts. With a velocity field
  that is exact on straight paths, UniPC stays on ``x_s = (1 - s) * hr + s * z1``, so the SR model is called
  on that line at those 5 sigmas (:func:`sr_sigmas`). The loss is flow matching on it: the target velocity
  is ``z1 - hr``, ``hr`` the clip's latent at the SR size, and ``s`` is drawn uniformly from the 5 sigmas.
* **Audio.** The SR model hears the base audio mixed with fresh noise, ``0.7 * noise + 0.3 * audio``, the
  same at every step, and its audio output is thrown away (the base audio ships). So the clip's audio
  latents are mixed the same way (:func:`~hhtune.sampling.samplers.sr_heard_audio`) and there is no audio loss.
* **Crops** (``data.sr_crop``). The model is run on a random window of the high-resolution frames, all
  frames kept, so a step holds about as many tokens as a 256p-540p one. Local attention (1080p) is a window
  over *frames* (the official ``calc_local_qk_range``), so a spatial crop leaves the frames every token sees
  unchanged. Offsets are even, so every token is a 2x2 patch the full frame also has. The crop's tokens
  carry the coordinates they have in the full frame (:func:`~hhtune.model.packing.window_coords`), not the
  crop's own: video positions are centred on the frame while audio and text sit at ``h = w = 0``, so
  video-audio and video-text attention see where a token is in the frame, and own coordinates would move
  every token towards the centre (between video tokens only differences count, and both agree).

The random choices of a sample come from the same generators as the first-stage objective
(:func:`~hhtune.training.objective.sample_generator`, :func:`~hhtune.training.objective.noise_generator`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..contract import VIDEO_STRIDE
from ..model.packing import window_coords
from ..recipe import LossSection, Recipe
from ..sampling.samplers import SR_NOISE_VALUE, SR_STEPS, official_sigmas, renoise, sr_heard_audio, upsample
from .balance import EmaBalance
from .data import Batch
from .objective import LossOutput, flow_matching_loss, noise_generator, sample_generator, video_frame_weights

#: The shift of the SR stage's schedule: the official ``EvaluationConfig.shift``, which both stages use.
SR_SHIFT = 5.0


def sr_sigmas(steps: int = SR_STEPS, shift: float = SR_SHIFT) -> Tensor:
    """The ``steps`` sigmas at which the SR stage calls the model (the official schedule without its final 0)."""
    return official_sigmas(steps, shift)[:-1]


def sr_start(lr_video: Tensor, size: tuple[int, int], noise: Tensor, noise_value: int = SR_NOISE_VALUE) -> Tensor:
    """The SR stage's start point from base-size latents ``[B, C, T, h, w]``: upsampled to ``size`` ``(H, W)``
    and re-noised with ``noise`` ``[B, C, T, H, W]`` at ``noise_value``."""
    return renoise(upsample(lr_video, size), noise, noise_value)


def crop_window(full: tuple[int, int], crop: list[int] | tuple[int, int] | None,
                gen: torch.Generator) -> tuple[int, int, int, int]:  # fmt: skip
    """``(top, left, height, width)`` in latents of a random window of ``crop`` pixels ``(height, width)`` in a
    latent grid ``full``: even offsets (whole 2x2 patches), each side at most the grid's; ``None`` = the grid."""
    if crop is None:
        return 0, 0, *full
    h, w = (min(c // s, f) for c, s, f in zip(crop, VIDEO_STRIDE[1:], full))
    top, left = (2 * int(torch.randint((f - c) // 2 + 1, (), generator=gen)) for f, c in zip(full, (h, w)))
    return top, left, h, w


def sr_flow_matching_loss(model: torch.nn.Module, batch: Batch, cfg: LossSection, *, seed: int,
                          caption_dropout: float, crop: list[int] | None = None) -> LossOutput:  # fmt: skip
    """Flow matching from the SR start point to the clip's high-resolution latents (module docstring).

    ``batch.sr_video`` holds the targets, ``batch.video`` the base-size latents they start from. ``crop``
    (pixels) trains on one random window per clip. Video only: the SR stage's audio output is not used.
    """
    if batch.sr_video is None:
        raise ValueError("an SR run needs the clips at the SR size (the dataset's sr_video_latents); build the "
                         "dataset with data_prep's sr_resolution")  # fmt: skip
    dev, bsz = batch.video.device, batch.size
    gens = [sample_generator(seed, batch.index, r) for r in range(bsz)]
    visited = sr_sigmas()
    sigmas = torch.stack([visited[int(torch.randint(len(visited), (), generator=g))] for g in gens]).to(dev)
    drop = torch.tensor([float(torch.rand((), generator=g)) < caption_dropout for g in gens], device=dev)
    i2v = torch.tensor([float(torch.rand((), generator=g)) < cfg.i2v_probability for g in gens], device=dev)
    windows = [crop_window(tuple(batch.sr_video.shape[-2:]), crop, g) for g in gens]
    up = upsample(batch.video, tuple(batch.sr_video.shape[-2:]))  # then cut to the window, then re-noised
    hr = torch.stack([batch.sr_video[b, :, :, y : y + h, x : x + w] for b, (y, x, h, w) in enumerate(windows)])
    up = torch.stack([up[b, :, :, y : y + h, x : x + w] for b, (y, x, h, w) in enumerate(windows)])
    noise_gens = [noise_generator(seed, batch.index, r, dev) for r in range(bsz)]
    eps = torch.stack([torch.randn(hr.shape[1:], generator=g, device=dev) for g in noise_gens])
    noise_a = torch.stack([torch.randn(batch.audio.shape[1:], generator=g, device=dev) for g in noise_gens])
    start = renoise(up, eps)  # sr_start, on the window
    s = sigmas.view(-1, 1, 1, 1, 1)
    x = (1 - s) * hr + s * start
    i2v &= batch.has_reference.to(dev)
    x[i2v, :, :1] = hr[i2v, :, :1]  # image-to-video: the sampler pins the reference encoded at the SR size
    text_lengths = torch.where(drop, torch.zeros_like(batch.text_lengths), batch.text_lengths)
    heard = sr_heard_audio(batch.audio, noise_a)
    positions = None
    if crop is not None:  # where the window's tokens sit in the full frame
        grid = (hr.shape[2], *batch.sr_video.shape[-2:])
        positions = torch.stack([window_coords(grid, w) for w in windows]).to(dev)
    pred_v, _ = model(x, heard, batch.text, text_lengths=text_lengths, audio_lengths=batch.audio_lengths,
                      video_positions=positions)  # fmt: skip

    frames_w = video_frame_weights(batch.speech_mask, hr.shape[2], cfg.speech_weight)
    frames_w[i2v, 0] = 0.0
    err_v = (pred_v.float() - (start - hr)).square().mean(dim=(1, 3, 4))  # [B, T]
    per_sample = cfg.video_weight * (err_v * frames_w).sum(1) / frames_w.sum(1).clamp_min(1e-8)
    video_loss = (err_v * frames_w).sum() / frames_w.sum().clamp_min(1e-8)
    tokens = int(bsz * hr.shape[2] * (hr.shape[3] // 2) * (hr.shape[4] // 2) + batch.audio_lengths.sum()
                 + text_lengths.sum())  # fmt: skip
    return LossOutput(cfg.video_weight * video_loss, video_loss.detach(), torch.zeros((), device=dev), sigmas,
                      per_sample.detach(), tokens, audio_sigmas=sigmas)  # fmt: skip


def training_loss(model: torch.nn.Module, batch: Batch, recipe: Recipe,
                  balance: EmaBalance | None = None) -> LossOutput:  # fmt: skip
    """The loss of one micro-batch for ``recipe``'s variant: the SR objective for the SR stages, else the
    first-stage flow matching (:func:`~hhtune.training.objective.flow_matching_loss`, with ``balance``). The
    first stage's audio and mouth options are refused for SR runs by the recipe checks."""
    if recipe.trains_sr:
        return sr_flow_matching_loss(model, batch, recipe.loss, seed=recipe.train.seed,
                                     caption_dropout=recipe.caption_dropout, crop=recipe.data.sr_crop)  # fmt: skip
    return flow_matching_loss(model, batch, recipe.loss, seed=recipe.train.seed,
                              caption_dropout=recipe.caption_dropout, balance=balance)  # fmt: skip
