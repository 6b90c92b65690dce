"""The Fourier RoPE of the official model: per-token (t, h, w) coordinates rotate q and k."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_rope_coords(coords: Tensor) -> None:
    """Raise ``ValueError`` for coordinates ``[..., 9]`` that give no finite RoPE scale.

    A size of 1 needs a reference size of 1 (the scale is ``(ref - 1) / (size - 1)``). The
    check reads the values on the host once, before the forward, instead of asserting on the
    device (a device-side assert is fatal to a CUDA context). Coordinates the model builds
    itself are valid by construction; this is for coordinates a caller passes in.
    """
    sizes, refs = coords[..., 3:6], coords[..., 6:9]
    bad = ((sizes == 1) & (refs != 1)) | ~torch.isfinite(coords[..., :9]).all(-1, keepdim=True)
    if bool(bad.any()):
        raise ValueError("invalid RoPE coordinates: a size of 1 needs a reference size of 1, "
                         "and every value must be finite")


class FourierRope(nn.Module):
    """Element-wise Fourier RoPE over (t, h, w) from 9-column coordinates.

    ``bands`` (``head_dim // 8`` inverse frequencies) is a persistent buffer, as in the
    official checkpoint (``adapter.rope.bands``).
    """

    def __init__(self, head_dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        n = head_dim // 8
        self.register_buffer("bands", 1.0 / temperature ** (torch.arange(n, dtype=torch.float32) / n))

    def forward(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """``coords [..., 9]`` (valid: see :func:`check_rope_coords`) -> ``(cos, sin)``, each
        ``[..., 3 * head_dim // 8]``."""
        xyz, sizes, refs = coords[..., 0:3], coords[..., 3:6], coords[..., 6:9]
        scales = (refs - 1) / (sizes - 1)
        scales = torch.where((refs == 1) & (sizes == 1), torch.ones_like(scales), scales)
        centers = (sizes - 1) / 2
        centers = torch.cat([torch.zeros_like(centers[..., :1]), centers[..., 1:]], dim=-1)  # time is not centred
        proj = ((xyz - centers) * scales).unsqueeze(-1) * self.bands
        return proj.cos().flatten(-2), proj.sin().flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of ``x [B, L, H, D]`` (non-interleaved halves)."""
    ro = cos.shape[-1] * 2
    cos = torch.cat([cos, cos], dim=-1).unsqueeze(-2)
    sin = torch.cat([sin, sin], dim=-1).unsqueeze(-2)
    head, tail = x[..., :ro], x[..., ro:]
    x1, x2 = head.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return torch.cat([head * cos + rotated * sin, tail], dim=-1)
