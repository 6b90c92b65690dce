"""The two-stage render of the official pipeline: the base or distilled model at the base size, then a
super-resolution DiT (``540p_sr/`` or ``1080p_sr/``) at the delivered size, then the decoders.

Only one DiT sits on the device at a time: the first stage's model goes to the host while the SR model runs
(the official ``CPU_OFFLOAD`` path of its 1080p example), and comes back after. Each stage takes a loaded
transformer; callers that need neither again (``python -m hhtune.sample``) free the first before loading the SR
one, validation keeps both and moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..contract import VIDEO_STRIDE, SrResolution, sr_size
from ..encoders import EncoderPaths, VideoDecoder, load_video_vae
from ..model import HappyHorseTransformer, ModelConfig, check_variant, load_checkpoint, load_variant
from .generate import (
    NEGATIVE_PROMPT,
    Generated,
    decode_latents,
    encode_prompts,
    encode_reference,
    generate,
    held_on,
    model_velocity_fn,
)
from .samplers import SR_STEPS, sample_super_resolution


def load_stage_model(spec: str, device: str | torch.device = "cpu", *, sr: SrResolution | None = None,
                     adapters: Sequence = (), check_base: bool | str = True,
                     compute_dtype: str = "auto") -> torch.nn.Module:  # fmt: skip
    """The transformer of one stage in eval mode: an official-layout checkpoint folder, or a preset name (random
    weights, seeded 0: tests and smoke runs), with ``adapters`` (``AdapterSpec``: path, strength, modalities)
    applied on top, each checked against the model as :func:`hhtune.adapters.load` does.

    ``sr`` names the super-resolution stage the checkpoint must be (``540p_sr/`` or ``1080p_sr/``; run with its
    v1 coordinates and local attention); without it the checkpoint must be a first-stage (base or distill) one.
    A checkpoint of the other kind is refused (:class:`~hhtune.model.CheckpointError`, naming the layout found).
    """
    from ..adapters import load as load_adapter  # noqa: PLC0415 -- heavy: peft loads in ~1 s, only with adapters

    variant = f"sr_{sr}" if sr is not None else None
    if spec in ModelConfig.preset_names() and not Path(spec).exists():
        torch.manual_seed(0)
        config = ModelConfig.preset(spec) if variant is None else ModelConfig.preset(spec, variant)
        model = HappyHorseTransformer(config).to(device)
    elif variant is None:
        check_variant(spec, "distill")  # any first-stage checkpoint; an SR one is refused
        model = load_checkpoint(spec, device=device)
    else:
        model = load_variant(spec, variant, device=device)
    model.set_compute_dtype(compute_dtype)
    for path, strength, modalities in adapters:
        model = load_adapter(path, model, strength=strength, modalities=modalities, check_base=check_base)
    return model.eval()


@dataclass
class SrStage:
    """The second stage of a render: which resolution, the SR transformer (adapter applied), and its guidance.

    ``guidance`` runs two forwards per step with the negative prompt, at the official ``sr_video_txt_guidance_scale``
    and CFG trick (``sr_cfg_number = 2``, the official config's default); the published ``sr_540p`` and
    ``sr_1080p`` examples run one forward per step (``sr_cfg_number = 1``), which is the default here.
    """

    resolution: SrResolution
    model: torch.nn.Module
    guidance: bool = False

    @property
    def steps(self) -> int:
        """Model calls of the stage, counted once per step as the progress bars do."""
        return SR_STEPS


def load_sr_stage(resolution: SrResolution, spec: str, adapter: str | None = None, *,
                  compute_dtype: str = "auto") -> SrStage:  # fmt: skip
    """An unguided SR stage (as the official SR examples run) loaded on the host, where it waits between its own
    steps on the device: ``spec`` a ``540p_sr/`` or ``1080p_sr/`` folder or a preset name, ``adapter`` a
    ``PATH[:STRENGTH]`` spec for it. Validation (``validation.sr``) and ``python -m hhtune.evaluate`` render with it."""
    from ..adapters import parse_spec  # noqa: PLC0415 -- heavy: peft loads in ~1 s, only with adapters

    adapters = [parse_spec(adapter)] if adapter else []
    model = load_stage_model(spec, "cpu", sr=resolution, adapters=adapters, compute_dtype=compute_dtype)
    return SrStage(resolution, model)


def super_resolve(stage: SrStage, video: Tensor, audio: Tensor, *, encoders: EncoderPaths, aspect: str,
                  base_resolution: int, generator: torch.Generator, text_features: tuple[Tensor, int],
                  negative_features: tuple[Tensor, int] | None = None, reference_image: np.ndarray | None = None,
                  device: str | torch.device = "cpu", progress=None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The base stage's ``(video, audio)`` latents refined by ``stage.model`` at the SR size; audio unchanged.

    ``reference_image`` (image-to-video) is encoded again at the SR size and pinned as the first latent frame.
    """
    if stage.guidance and negative_features is None:
        raise ValueError("an SR stage with guidance needs negative_features (the negative prompt's features)")
    width, height = sr_size(aspect, base_resolution, stage.resolution)
    reference = None
    if reference_image is not None:
        video_vae = load_video_vae(encoders.video_vae, device)
        reference = encode_reference(video_vae, reference_image, width, height)
        del video_vae
    text, n = text_features
    fn = model_velocity_fn(stage.model, text[:, :n].to(device), n)
    uncond = None
    if stage.guidance:
        neg, neg_n = negative_features
        uncond = model_velocity_fn(stage.model, neg[:, :neg_n].to(device), neg_n)
    size = (height // VIDEO_STRIDE[1], width // VIDEO_STRIDE[2])
    return sample_super_resolution(fn, video.to(device), audio.to(device), size, uncond_velocity_fn=uncond,
                                   generator=generator, reference_first_frame=reference,
                                   callback=progress)  # fmt: skip


def render(model: torch.nn.Module, prompt: str, encoders: EncoderPaths, *, sr: SrStage | None = None,
           seconds: float = 2.0, aspect: str = "16:9", base_resolution: int = 256, sampler: str = "distilled",
           seed: int = 0, audio_path: str | None = None, video_guidance: float = 5.0, audio_guidance: float = 5.0,
           text_features: tuple[Tensor, int] | None = None, negative_features: tuple[Tensor, int] | None = None,
           reference_image: np.ndarray | None = None, device: str | torch.device = "cpu", decode: bool = True,
           vae_tiling: bool = False, offload_model: bool = False, video_decoder: VideoDecoder | None = None,
           progress=None) -> Generated | tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`~hhtune.sampling.generate.generate` with ``sr`` as a second stage: one clip, decoded at the SR size.

    Without ``sr`` this is ``generate``. With it, ``model`` renders the base size with ``sampler``, goes to the
    host while ``sr.model`` runs on ``device``, and comes back; ``sr.model`` is put back where it was. One generator
    seeded with ``seed`` draws the noise of both stages. ``decode=False`` returns the SR latents. Prompt
    features not given are encoded here, before either stage runs.
    """
    negative = sampler == "base" or (sr is not None and sr.guidance)
    if text_features is None or (negative and negative_features is None):
        encoded = encode_prompts([prompt, NEGATIVE_PROMPT] if negative else [prompt], encoders.text_encoder, device)
        text_features, negative_features = encoded[0], (encoded[1] if negative else None)
    generator = torch.Generator().manual_seed(seed)
    common = dict(seconds=seconds, aspect=aspect, base_resolution=base_resolution, sampler=sampler, seed=seed,
                  audio_path=audio_path, video_guidance=video_guidance, audio_guidance=audio_guidance,
                  reference_image=reference_image, device=device, text_features=text_features,
                  negative_features=negative_features, vae_tiling=vae_tiling, offload_model=offload_model,
                  video_decoder=video_decoder, generator=generator, progress=progress)  # fmt: skip
    if sr is None:
        return generate(model, prompt, encoders, decode=decode, **common)
    video, audio = generate(model, prompt, encoders, decode=False, **common)
    with held_on(model, "cpu"), held_on(sr.model, device):
        video, audio = super_resolve(sr, video, audio, encoders=encoders, aspect=aspect,
                                     base_resolution=base_resolution, generator=generator,
                                     text_features=text_features, negative_features=negative_features,
                                     reference_image=reference_image, device=device, progress=progress)  # fmt: skip
    if not decode:
        return video, audio
    with held_on(model, "cpu" if offload_model else None):
        return decode_latents(video, audio, encoders, device=device, vae_tiling=vae_tiling,
                              video_decoder=video_decoder)
