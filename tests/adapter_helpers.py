"""Shared builders for the adapter tests: a seeded tiny base, a 'trained' adapter, fixed inputs."""

from __future__ import annotations

import torch

from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig


def base_model(seed: int = 0) -> HappyHorseTransformer:
    """The tiny preset with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return HappyHorseTransformer(ModelConfig.preset("tiny")).eval()


def inputs():
    """One fixed (video, audio, text) input of the tiny model."""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
            torch.randn(1, 3, 32, generator=g))


def trained(seed: int = 0, rank: int = 4, base_seed: int = 0, **kw):
    """A PEFT model whose adapter has random (non-zero) A and B, as after training."""
    model = add_lora(base_model(base_seed), LoraSettings(rank=rank, alpha=2 * rank, init="gaussian", **kw))
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_magnitude" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def out(model) -> torch.Tensor:
    """The model's video and audio outputs on :func:`inputs`, flattened into one fp32 vector."""
    with torch.no_grad():
        v, a = model(*inputs())
    return torch.cat([v.flatten(), a.flatten()]).float()


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative L2 error."""
    return float((got - want).norm() / want.norm())
