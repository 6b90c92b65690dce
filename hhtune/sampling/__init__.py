"""Sampling: the distilled and base samplers, generation to mp4, and validation metrics."""

from .generate import Generated, generate, latent_shapes, model_velocity_fn, write_mp4, write_previews
from .samplers import official_sigmas, sample_base, sample_distilled, sample_super_resolution

__all__ = ["Generated", "generate", "latent_shapes", "model_velocity_fn", "official_sigmas", "sample_base",
           "sample_distilled", "sample_super_resolution", "write_mp4", "write_previews"]  # fmt: skip
