"""Numerics of the frozen block linears: the compute dtype, FP8 dequantisation and FP8 matmuls.

* The compute dtype is ``auto``, ``bf16`` or ``fp32``. ``bf16`` is the official numerics (and
  the parity path). CPUs without native bf16 matmuls emulate them about 70x slower than
  fp32, so ``auto`` computes in fp32 off CUDA.
* FP8 storage (``float8_e4m3fn`` with an fp32 scale, per tensor or per output row) is
  dequantised on the fly, one expert at a time and in chunks of at most
  :data:`DEQUANT_CHUNK_ELEMENTS` elements, so no fp32 copy of a whole weight is ever made.
* ``fp8_compute`` runs the forward GEMM as a real FP8 matmul (``torch._scaled_mm``) where the
  device has one (CUDA sm89+, or a CPU build with the op); :func:`fp8_matmul_unavailable`
  says why not.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..contract import COMPUTE_DTYPES, ComputeDtype

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
DEQUANT_CHUNK_ELEMENTS = 1 << 24
"""Most elements dequantised at once (64 MiB of fp32 temporaries)."""
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_compute_dtype(setting: ComputeDtype, device: torch.device | str) -> torch.dtype:
    """The torch dtype of ``setting`` on ``device``: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    if setting == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if setting not in _DTYPES:
        raise ValueError(f"unknown compute dtype {setting!r}; allowed: {', '.join(COMPUTE_DTYPES)}")
    return _DTYPES[setting]


def dequantized(weight: Tensor, fp8_scale: Tensor | None, dtype: torch.dtype, rows: slice | None = None) -> Tensor:
    """``weight[rows]`` in ``dtype``; FP8 storage is scaled by its ``fp8_scale`` first.

    The dequantised weight is rounded to bf16 (the storage a dequantising load gives), so
    on-the-fly dequantisation equals dequantisation on load in every compute dtype. FP8 rows
    are dequantised in chunks of at most :data:`DEQUANT_CHUNK_ELEMENTS` elements.
    """
    rows = rows or slice(0, weight.shape[0])
    w = weight[rows]
    if weight.dtype != FP8_DTYPE:
        return w.to(dtype)
    scale = fp8_scale if fp8_scale is None or fp8_scale.dim() == 0 else fp8_scale[rows]
    out = torch.empty(w.shape, dtype=dtype, device=w.device)
    step = max(1, DEQUANT_CHUNK_ELEMENTS // max(1, w[0].numel()))
    for r in range(0, w.shape[0], step):
        s = scale if scale is None or scale.dim() == 0 else scale[r : r + step]
        out[r : r + step] = (w[r : r + step].float() * s).to(torch.bfloat16)
    return out


def fp8_matmul_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch._scaled_mm`` cannot run on ``device`` (``None`` when it can)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return ("FP8 matmuls need a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                    f"this one is {major}.{minor}")
        return None
    return _probe_scaled_mm(device.type)


@functools.lru_cache(maxsize=4)
def _probe_scaled_mm(device_type: str) -> str | None:
    a = torch.zeros(16, 16, dtype=FP8_DTYPE, device=device_type)
    one = torch.ones((), device=device_type)
    try:
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        return f"this torch build has no FP8 matmul (torch._scaled_mm) on {device_type}: {str(e).splitlines()[0]}"
    return None


def fp8_matmul_fits(weight: Tensor, fp8_scale: Tensor | None, experts: int) -> bool:
    """Whether ``_scaled_mm`` takes this weight: FP8 with one scale, both dims multiples of 16."""
    return (weight.dtype == FP8_DTYPE and fp8_scale is not None and fp8_scale.numel() == 1
            and weight.shape[1] % 16 == 0 and (weight.shape[0] // experts) % 16 == 0)  # fmt: skip


def fp8_linear(x: Tensor, weight: Tensor, fp8_scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``x @ (weight * fp8_scale).T`` as an FP8 matmul: ``x`` is quantised per tensor to e4m3.

    ``weight`` is ``[out, in]`` in ``float8_e4m3fn`` (row-major, so its transpose is the
    column-major operand ``_scaled_mm`` wants); the result is ``[..., out]`` in ``out_dtype``.
    """
    flat = x.reshape(-1, x.shape[-1])
    x_scale = (flat.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    xq = (flat.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=fp8_scale.float().reshape(()), out_dtype=out_dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])
