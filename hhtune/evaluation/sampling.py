"""Sampling the base and each adapter through the validation pipeline (:func:`hhtune.sampling.generate`).

Every variant (the base without adapter, a checkpoint, an adapter at a strength) is sampled at
the same seeds from the same text features, so two variants differ only by the adapter. The
distilled sampler runs 8 steps, the base sampler 32 UniPC steps with CFG, as in validation.
With a super-resolution stage (``validation.sr``) the first stage's latents are kept and refined afterwards
(:func:`super_resolve_samples`), each from its own noise generator, as ``python -m hhtune.sample --sr`` renders.
The VAEs that decode the clips are loaded once for the whole evaluation (:class:`Decoders`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..adapters import load
from ..encoders import EncoderPaths, decode_video, load_audio_vae, load_video_vae
from ..sampling.generate import OUTPUT_AUDIO_RATE, generate, to_output_rate, write_mp4
from ..sampling.super_resolution import SrStage, super_resolve
from .clips import AVClip

Features = tuple[Tensor, int]


@dataclass(frozen=True)
class SampleSettings:
    """How every clip is sampled (the run's ``validation`` section)."""

    seconds: float = 2.0
    aspect: str = "16:9"
    base_resolution: int = 256
    video_guidance: float = 5.0
    audio_guidance: float = 5.0


class Decoders:
    """The video and audio VAEs of an evaluation, each loaded on first use and kept for every later clip."""

    def __init__(self, paths: EncoderPaths, device: str | torch.device = "cpu") -> None:
        self.paths = paths
        self.device = torch.device(device)
        self._video = self._audio = None

    def decode(self, video: Tensor, audio: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Latents of one clip -> ``(frames [F, H, W, 3] uint8, audio [N, 2] float32 at 44100 Hz)``, as
        :func:`~hhtune.sampling.generate.generate` decodes them."""
        if self._video is None:
            self._video = load_video_vae(self.paths.video_vae, self.device)
            self._audio = load_audio_vae(self.paths.audio_vae, self.device)
        frames = decode_video(self._video, video.to(self.device))
        wave = self._audio.decode(audio.to(self.device))[0].float().cpu().numpy().T  # [N, 2] at 51200 Hz
        return frames, to_output_rate(wave)


@dataclass
class Sample:
    """One sampled clip: which variant, prompt (index) and seed; its latents, decoded clip and mp4."""

    variant: str
    prompt: int
    seed: int
    video_latents: Tensor
    audio_latents: Tensor
    clip: AVClip | None = None
    mp4: Path | None = None
    generator_state: Tensor | None = None  # the noise generator after this stage: a second stage continues it


@contextmanager
def with_adapter(model: torch.nn.Module, adapter: str | Path, strength: float,
                 check_base: bool = True) -> Iterator[torch.nn.Module]:  # fmt: skip
    """``model`` carrying ``adapter`` (a PEFT folder, adapter file or training checkpoint) at ``strength``.

    The adapter is removed again on exit, leaving ``model`` as it was. ``check_base=False`` applies
    an adapter to another base than the one it was trained on (a base-trained adapter on the distilled model).
    """
    peft = load(adapter, model, strength=strength, check_base=check_base)
    peft.eval()
    try:
        yield peft
    finally:
        peft.unload()


def sample_variant(model: torch.nn.Module, variant: str, features: list[Features], seeds: tuple[int, ...], *,
                   decoders: Decoders, settings: SampleSettings, sampler: str = "distilled",
                   negative: Features | None = None, out_dir: Path | None = None, decode: bool = True,
                   on_clip: Callable[[AVClip], None] | None = None) -> list[Sample]:  # fmt: skip
    """Sample every prompt (by its text features) at every seed with ``model``.

    ``sampler="base"`` (32 UniPC steps with CFG) needs ``negative``, the features of
    :data:`~hhtune.sampling.generate.NEGATIVE_PROMPT`. With ``out_dir`` each clip is written to
    ``out_dir/p{prompt:02d}_s{seed}.mp4``; ``decode=False`` keeps latents only (no clip, no mp4).
    ``decoders`` (one for the whole evaluation) decodes the latents. ``on_clip`` receives each decoded clip as
    soon as it exists (the evaluation starts scoring it in the background while the next one samples).
    """
    device = next(model.parameters()).device
    out: list[Sample] = []
    for i, feats in enumerate(features):
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            video, audio = generate(model, "", decoders.paths, seconds=settings.seconds, aspect=settings.aspect,
                                    base_resolution=settings.base_resolution, sampler=sampler, seed=seed,
                                    device=device, text_features=feats, negative_features=negative, decode=False,
                                    video_guidance=settings.video_guidance, audio_guidance=settings.audio_guidance,
                                    generator=generator)  # fmt: skip
            sample = Sample(variant, i, seed, video.cpu(), audio.cpu(), generator_state=generator.get_state())
            out.append(_decoded(sample, decoders, out_dir, on_clip) if decode else sample)
    return out


def super_resolve_samples(samples: list[Sample], stage: SrStage, features: list[Features], *, decoders: Decoders,
                          settings: SampleSettings, device: str | torch.device, out_dir: Path | None = None,
                          negative: Features | None = None,
                          on_clip: Callable[[AVClip], None] | None = None) -> list[Sample]:  # fmt: skip
    """First-stage ``samples`` (latents, from ``sample_variant(decode=False)``) refined by ``stage`` at its size.

    Each continues its own noise generator, so a clip equals ``python -m hhtune.sample --sr`` at its seed. The
    refined clips are decoded (``out_dir/VARIANT/p{prompt:02d}_s{seed}.mp4``) and handed to ``on_clip`` as
    :func:`sample_variant` does; ``features`` are the prompts' text features, by prompt index. The caller puts
    ``stage.model`` on ``device`` (and the first stage's models away).
    """
    out = []
    for s in samples:
        generator = torch.Generator()
        generator.set_state(s.generator_state)
        video, audio = super_resolve(stage, s.video_latents, s.audio_latents, encoders=decoders.paths,
                                     aspect=settings.aspect, base_resolution=settings.base_resolution,
                                     generator=generator, text_features=features[s.prompt],
                                     negative_features=negative, device=device)  # fmt: skip
        refined = Sample(s.variant, s.prompt, s.seed, video.cpu(), audio.cpu(), generator_state=generator.get_state())
        out.append(_decoded(refined, decoders, None if out_dir is None else out_dir / s.variant, on_clip))
    return out


def _decoded(sample: Sample, decoders: Decoders, out_dir: Path | None,
             on_clip: Callable[[AVClip], None] | None) -> Sample:  # fmt: skip
    """``sample`` with its clip (handed to ``on_clip`` at once) and, with ``out_dir``, its mp4."""
    frames, wave = decoders.decode(sample.video_latents, sample.audio_latents)
    sample.clip = AVClip(frames=frames, audio=wave.mean(axis=1).astype("float32"), sample_rate=OUTPUT_AUDIO_RATE,
                         label=f"{sample.variant} p{sample.prompt:02d} s{sample.seed}")  # fmt: skip
    if on_clip is not None:
        on_clip(sample.clip)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        sample.mp4 = write_mp4(frames, wave, out_dir / f"p{sample.prompt:02d}_s{sample.seed}.mp4")
    return sample
