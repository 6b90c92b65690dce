"""The official block's elementwise parts: the multi-modality RMSNorm and the clamped activations.

Numerics as the official ``dit_module.py``: everything in fp32, the norm scales by ``(weight + 1)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .linears import Segments


class MultiModalityRMSNorm(nn.Module):
    """RMSNorm computed in fp32 with a ``(weight + 1)`` scale, one weight per modality."""

    def __init__(self, dim: int, num_modality: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.num_modality, self.eps = dim, num_modality, eps
        self.weight = nn.Parameter(torch.zeros(dim * num_modality, dtype=torch.float32))

    def forward(self, x: Tensor, segments: Segments | None = None) -> Tensor:
        t = x.float()
        t = t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.num_modality == 1:
            return (t * (self.weight + 1)).to(x.dtype)
        if segments is None:
            raise ValueError("a multi-modality norm needs the modality segments")
        parts = [p * (w + 1) for p, w in zip(segments.split(t), self.weight.chunk(self.num_modality))]
        return torch.cat(parts, dim=1).to(x.dtype)


def swiglu7(x: Tensor, alpha: float = 1.702, limit: float = 7.0) -> Tensor:
    """Clamped SwiGLU with interleaved (glu, linear) channels and a +1 on the linear half (fp32)."""
    x = x.float()
    glu = x[..., ::2].clamp(max=limit)
    lin = x[..., 1::2].clamp(min=-limit, max=limit)
    return glu * torch.sigmoid(alpha * glu) * (lin + 1)


def gelu7(x: Tensor, alpha: float = 1.702, limit: float = 7.0) -> Tensor:
    """Clamped sigmoid-GELU (fp32)."""
    x = x.float().clamp(max=limit)
    return x * torch.sigmoid(alpha * x)
