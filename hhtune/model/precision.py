"""The compute dtype of the block linears and attention: ``auto``, ``bf16`` or ``fp32``.

``bf16`` is the official numerics (and the parity path). CPUs without native bf16
matmuls emulate them about 70x slower than fp32, so ``auto`` computes in fp32 off CUDA.
"""

from __future__ import annotations

import torch

from ..contract import COMPUTE_DTYPES, ComputeDtype

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_compute_dtype(setting: ComputeDtype, device: torch.device | str) -> torch.dtype:
    """The torch dtype of ``setting`` on ``device``: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    if setting == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if setting not in _DTYPES:
        raise ValueError(f"unknown compute dtype {setting!r}; allowed: {', '.join(COMPUTE_DTYPES)}")
    return _DTYPES[setting]


def dequantized(weight: torch.Tensor, fp8_scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``; FP8 storage is scaled by its per-tensor ``fp8_scale`` first.

    The dequantised weight is rounded to bf16 (the storage a dequantising load gives), so
    on-the-fly dequantisation equals dequantisation on load in every compute dtype.
    """
    if weight.dtype == torch.float8_e4m3fn:
        return (weight.float() * fp8_scale).to(torch.bfloat16).to(dtype)
    return weight.to(dtype)
