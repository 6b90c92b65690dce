"""The flow-matching objective the model was trained with.

``x_t = (1 - sigma) * x0 + sigma * noise`` and the target velocity ``v = noise - x0``,
jointly over video and audio latents. Every random choice of a sample (sigma, noise,
caption dropout, image-to-video) comes from generators seeded by
``(seed, global micro-batch index, row)``, so a step's loss does not depend on how the
run is split over processes or whether it was resumed. The scalar choices come from a
host generator (the host needs them anyway); the noise from a second stream drawn on the
batch's device, so no latent-sized tensor is made on the host and copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..recipe import LossSection
from .balance import EmaBalance
from .data import Batch
from .mouth import fold_mouth_weights, latent_frame_speech, mouth_weights


def shift_sigma(u: Tensor, shift: float) -> Tensor:
    """The model's timestep shift: ``shift * u / (1 + (shift - 1) * u)``."""
    return shift * u / (1 + (shift - 1) * u)


def sample_generator(seed: int, batch_index: int, row: int) -> torch.Generator:
    """The host generator of one sample's scalar choices (sigma, caption dropout, image-to-video)."""
    return torch.Generator().manual_seed(_mix(seed, batch_index, row, 0))


def noise_generator(seed: int, batch_index: int, row: int, device: torch.device | str) -> torch.Generator:
    """The generator of one sample's noise, on ``device``: a stream of its own, so noise never waits on the host.

    A CUDA generator draws other numbers than a CPU one from the same seed; either way a
    sample's noise depends only on ``(seed, batch_index, row)`` and the device type.
    """
    return torch.Generator(device=device).manual_seed(_mix(seed, batch_index, row, 1))


def _mix(seed: int, batch_index: int, row: int, stream: int) -> int:
    return (seed * 0x9E3779B1 + batch_index * 0x85EBCA77 + row * 0xC2B2AE3D + stream * 0x27D4EB2F) % (2**63 - 1)


def sample_sigma(cfg: LossSection, gen: torch.Generator, modality: Literal["video", "audio"] = "video") -> float:
    """One training sigma of ``modality``: uniform or logit-normal in (0, 1), then the schedule's shift."""
    distribution, mean, std, shift = cfg.sigma_settings(modality)
    if distribution == "uniform":
        u = torch.rand((), generator=gen)
    else:
        u = torch.sigmoid(mean + std * torch.randn((), generator=gen))
    return float(shift_sigma(u.clamp(1e-5, 1 - 1e-5), shift))


@dataclass
class LossOutput:
    """The loss to back-propagate and what is logged about it."""

    loss: Tensor
    video_loss: Tensor
    audio_loss: Tensor
    sigmas: Tensor  # [B] the video's (and, with loss.audio_sigma: tied, the audio's)
    per_sample: Tensor  # [B] detached
    tokens: int
    audio_sigmas: Tensor  # [B] the audio's sigmas (the same tensor as ``sigmas`` when tied)
    weights: Tensor | None = None  # [2] effective video and audio weights with loss.balance: ema, else None


def video_frame_weights(speech_mask: Tensor, latent_frames: int, speech_weight: float) -> Tensor:
    """Per latent-frame weights ``[B, T]`` from a per-video-frame speech mask ``[B, F]``: ``speech_weight`` on
    spoken latent frames, scaled by how spoken each is (:func:`~hhtune.training.mouth.latent_frame_speech`: the
    mask's maximum over the video frames it covers), 1 elsewhere."""
    if speech_weight == 1.0:
        return torch.ones(speech_mask.shape[0], latent_frames, device=speech_mask.device)
    return 1 + (speech_weight - 1) * latent_frame_speech(speech_mask, latent_frames)


def flow_matching_loss(
    model: torch.nn.Module, batch: Batch, cfg: LossSection, *, seed: int, caption_dropout: float,
    balance: EmaBalance | None = None,
) -> LossOutput:
    """Noise the batch, predict velocities and return the weighted MSE against ``noise - x0``.

    With ``loss.audio_sigma: independent`` the audio sigma is a fourth draw of the sample's host
    generator, so the video sigma and every other choice stay those of a tied run. ``balance``
    (``loss.balance: ema``) replaces the configured modality weights by the effective ones it returns.
    """
    dev = batch.video.device
    bsz = batch.size
    gens = [sample_generator(seed, batch.index, r) for r in range(bsz)]
    sigmas = torch.tensor([sample_sigma(cfg, g) for g in gens], device=dev)
    drop = torch.tensor([float(torch.rand((), generator=g)) < caption_dropout for g in gens], device=dev)
    i2v = torch.tensor([float(torch.rand((), generator=g)) < cfg.i2v_probability for g in gens], device=dev)
    audio_sigmas = sigmas if cfg.audio_sigma == "tied" else torch.tensor(
        [sample_sigma(cfg, g, "audio") for g in gens], device=dev)  # fmt: skip
    noise_gens = [noise_generator(seed, batch.index, r, dev) for r in range(bsz)]  # drawn where the batch is
    noise_v = torch.stack([torch.randn(batch.video.shape[1:], generator=g, device=dev) for g in noise_gens])
    noise_a = torch.stack([torch.randn(batch.audio.shape[1:], generator=g, device=dev) for g in noise_gens])
    i2v &= batch.has_reference.to(dev)

    s_v = sigmas.view(-1, 1, 1, 1, 1)
    s_a = audio_sigmas.view(-1, 1, 1)
    x_v = (1 - s_v) * batch.video + s_v * noise_v
    x_a = (1 - s_a) * batch.audio + s_a * noise_a
    if bool(i2v.any()) and batch.reference is not None:
        # image-to-video: the first latent frame is the clean reference, as the sampler pins it
        x_v[i2v, :, :1] = batch.reference[i2v]
    text_lengths = torch.where(drop, torch.zeros_like(batch.text_lengths), batch.text_lengths)

    pred_v, pred_a = model(x_v, x_a, batch.text, text_lengths=text_lengths, audio_lengths=batch.audio_lengths)
    target_v, target_a = noise_v - batch.video, noise_a - batch.audio

    t = batch.video.shape[2]
    frames_w = video_frame_weights(batch.speech_mask, t, cfg.speech_weight)
    frames_w[i2v, 0] = 0.0  # the pinned frame is given, not predicted
    cells = mouth_weights(batch, cfg)  # [B, T, H, W] latent-cell weights of loss.mouth_weight; None when off
    err_v, frames_w = fold_mouth_weights((pred_v.float() - target_v).square(), frames_w, cells)  # [B, T]
    valid_a = (torch.arange(batch.audio.shape[1], device=dev)[None] < batch.audio_lengths[:, None]).float()
    if batch.has_audio is not None:  # footage without an audio track: its encoded silence is not a target
        valid_a = valid_a * batch.has_audio.to(dev)[:, None]
    audio_w = valid_a * (1 + (cfg.speech_weight - 1) * batch.speech_mask)
    err_a = (pred_a.float() - target_a).square().mean(dim=2)  # [B, La]

    video_loss = (err_v * frames_w).sum() / frames_w.sum().clamp_min(1e-8)
    audio_loss = (err_a * audio_w).sum() / audio_w.sum().clamp_min(1e-8)
    weights = None if balance is None else balance.weights(video_loss, audio_loss, cfg.video_weight, cfg.audio_weight)
    w_v, w_a = (cfg.video_weight, cfg.audio_weight) if weights is None else weights.float()
    loss = w_v * video_loss + w_a * audio_loss
    per_sample = (
        w_v * (err_v * frames_w).sum(1) / frames_w.sum(1).clamp_min(1e-8)
        + w_a * (err_a * audio_w).sum(1) / audio_w.sum(1).clamp_min(1e-8)
    ).detach()
    nv = t * (batch.video.shape[3] // 2) * (batch.video.shape[4] // 2)
    tokens = int(bsz * nv + batch.audio_lengths.sum() + text_lengths.sum())
    return LossOutput(loss, video_loss.detach(), audio_loss.detach(), sigmas, per_sample, tokens, audio_sigmas,
                      weights)


def sigma_bucket(sigma: float, buckets: int = 4, *, audio: float | None = None) -> str:
    """Name of the sigma bucket a sample falls in, e.g. ``sigma_0.50-0.75``.

    With the sample's ``audio`` sigma (drawn apart, ``loss.audio_sigma: independent``), the
    bucket of the pair, e.g. ``sigma_0.50-0.75_audio_0.00-0.25``.
    """
    name = f"sigma_{_interval(sigma, buckets)}"
    return name if audio is None else f"{name}_audio_{_interval(audio, buckets)}"


def _interval(sigma: float, buckets: int) -> str:
    i = min(math.floor(sigma * buckets), buckets - 1)
    return f"{i / buckets:.2f}-{(i + 1) / buckets:.2f}"
