"""The frozen block linears of the transformer, and how they compute.

Every block linear is a :class:`SwappableLinear`: a bias-free weight stored in bf16, fp32
or FP8 (``float8_e4m3fn`` with an fp32 ``fp8_scale``), multiplied in the module's compute
dtype (``precision``) and returned in the input's dtype.

* :class:`BF16Linear` is one weight (an ``nn.Linear``, so PEFT wraps it by type);
* :class:`ExpertLinear` stacks three modality experts along the output dim (video, audio,
  text); the tokens of segment ``i`` (``[video | audio | text]`` along dim 1) use expert ``i``.

A weight that is not plainly on the device goes through an autograd function that keeps
nothing but the input for backward and gets the weight again when the input gradient is
computed: FP8 weights are dequantised one used expert at a time (never the whole stack in
fp32), and under block swap (``swap`` set to a :class:`WeightSource` by
:mod:`hhtune.model.offload`) the weight is whatever copy the source holds on the device.
With ``fp8_compute`` the forward GEMM is a real FP8 matmul (:func:`enable_fp8_compute`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import (
    ComputeDtype,
    dequantized,
    fp8_linear,
    fp8_matmul_fits,
    fp8_matmul_unavailable,
    resolve_compute_dtype,
)


class Segments(NamedTuple):
    """Token counts of the three modality segments of every row (``[video | audio | text]``)."""

    video: int
    audio: int
    text: int

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split ``x`` along the sequence dim (dim 1) into video, audio and text parts."""
        return torch.split(x, list(self), dim=1)  # type: ignore[return-value]


class WeightSource(Protocol):
    """Where a swapped linear's weight comes from (:class:`hhtune.model.offload.BlockSwap`)."""

    def weight(self, module: SwappableLinear) -> Tensor:
        """The module's weight on the compute device, in its storage dtype."""
        ...


class SwappableLinear(nn.Module):
    """Base of the frozen block linears: the only modules block swap and the memory plan move.

    Attributes: ``weight`` (storage), ``fp8_scale`` (``None`` unless the weight is FP8),
    ``precision`` (compute dtype setting; not ``compute_dtype``, which PEFT reads as a bnb
    dtype), ``swap`` (the :class:`WeightSource` under block swap) and ``fp8_compute``.
    """

    weight: nn.Parameter
    num_experts: int = 1

    def _init_frozen(self) -> None:
        self.register_buffer("fp8_scale", None, persistent=False)
        self.precision: ComputeDtype = "auto"
        self.swap: WeightSource | None = None
        self.fp8_compute = False

    def stored_weight(self) -> Tensor:
        """The weight on the compute device in its storage dtype (fetched from the swap source if swapped)."""
        return self.swap.weight(self) if self.swap is not None else self.weight

    def frozen_linear(self, x: Tensor, sizes: list[int] | None) -> Tensor:
        """``x @ W.T`` (per expert segment of ``sizes`` tokens along dim 1) in the compute dtype, in ``x``'s dtype."""
        dtype = resolve_compute_dtype(self.precision, x.device)
        plain = self.swap is None and self.fp8_scale is None and not self.fp8_compute
        if plain or self.weight.requires_grad:
            return expert_linear(x, self.weight.to(dtype), sizes, dtype)
        return _FrozenMatmul.apply(x, self, sizes, dtype)


class BF16Linear(nn.Linear, SwappableLinear):
    """A bias-free linear with bf16 weights, computed in the compute dtype, returning the input dtype."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | None = None) -> None:
        super().__init__(in_features, out_features, bias=False, device=device, dtype=torch.bfloat16)
        self._init_frozen()

    def forward(self, x: Tensor) -> Tensor:
        return self.frozen_linear(x, None)


class ExpertLinear(SwappableLinear):
    """Three modality experts stacked along the output dim (video, audio, text), computed in the compute dtype."""

    def __init__(self, in_features: int, out_features: int, num_experts: int = 3) -> None:
        super().__init__()
        self.in_features, self.out_features, self.num_experts = in_features, out_features, num_experts
        self.weight = nn.Parameter(torch.empty(out_features * num_experts, in_features, dtype=torch.bfloat16))
        self._init_frozen()
        if not self.weight.is_meta:
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: Tensor, segments: Segments) -> Tensor:
        return self.frozen_linear(x, list(segments))


def expert_linear(x: Tensor, weight: Tensor, sizes: list[int] | None, dtype: torch.dtype) -> Tensor:
    """``x @ weight.T`` in ``dtype``, returned in ``x``'s dtype.

    With ``sizes``, ``x`` is split along dim 1 into ``len(sizes)`` segments and ``weight``
    into as many experts along its output dim; segment ``i`` uses expert ``i``.
    """
    if sizes is None:
        return F.linear(x.to(dtype), weight).to(x.dtype)
    parts = [F.linear(p.to(dtype), w) for p, w in zip(torch.split(x, sizes, dim=1), weight.chunk(len(sizes)))]
    return torch.cat(parts, dim=1).to(x.dtype)


def _per_expert(x: Tensor, sizes: list[int] | None, rows: int, width: int,
                fn: Callable[[Tensor, slice], Tensor]) -> Tensor:  # fmt: skip
    """``fn(segment, expert rows)`` for every segment that has tokens; empty segments skip their expert."""
    parts = torch.split(x, sizes, dim=1) if sizes is not None else (x,)
    per = rows // len(parts)
    out = [fn(p, slice(i * per, (i + 1) * per)) if p.shape[1] else p.new_empty(*p.shape[:-1], width)
           for i, p in enumerate(parts)]  # fmt: skip
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class _FrozenMatmul(torch.autograd.Function):
    """The matmul of a frozen FP8, FP8-compute or swapped weight; backward gets the weight again."""

    @staticmethod
    def forward(ctx, x: Tensor, module: SwappableLinear, sizes: list[int] | None, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        ctx.module, ctx.sizes, ctx.dtype, ctx.in_dtype = module, sizes, dtype, x.dtype
        w, scale = module.stored_weight(), module.fp8_scale

        def one(part: Tensor, rows: slice) -> Tensor:
            if module.fp8_compute:
                return fp8_linear(part, w[rows], scale, dtype)  # type: ignore[arg-type]
            return F.linear(part.to(dtype), dequantized(w, scale, dtype, rows))

        return _per_expert(x, sizes, w.shape[0], w.shape[0] // (len(sizes) if sizes else 1), one).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        module = ctx.module
        w, scale = module.stored_weight(), module.fp8_scale
        gx = _per_expert(grad, ctx.sizes, w.shape[0], w.shape[1],
                         lambda g, rows: g.to(ctx.dtype) @ dequantized(w, scale, ctx.dtype, rows))  # fmt: skip
        return gx.to(ctx.in_dtype), None, None, None


def enable_fp8_compute(model: nn.Module, device: torch.device | str) -> int:
    """Run the forward GEMMs of ``model``'s FP8-stored linears as FP8 matmuls; returns how many.

    Linears whose shapes or per-row scales ``torch._scaled_mm`` does not take keep the
    dequantised path. Raises ``ValueError`` when the device has no FP8 matmul or the
    model holds no FP8 weights.
    """
    reason = fp8_matmul_unavailable(device)
    if reason is not None:
        raise ValueError(f"model.fp8_compute: {reason}; set model.fp8_compute: false")
    linears = [m for m in model.modules() if isinstance(m, SwappableLinear) and m.fp8_scale is not None]
    if not linears:
        raise ValueError("model.fp8_compute needs FP8 weights: an FP8 checkpoint loaded with model.fp8_base: true")
    n = 0
    for m in linears:
        m.fp8_compute = fp8_matmul_fits(m.weight, m.fp8_scale, m.num_experts)
        n += m.fp8_compute
    return n
