"""Memory tools for big models on small cards: block swap and activation offload.

Block swap (:class:`BlockSwap`) keeps the frozen block-linear weights of some layers in
(pinned, on CUDA) host memory. A layer's weights are copied to the device just before
it runs (the next swapped layer is prefetched, on a side stream on CUDA) and released
right after, in forward and in the checkpointed recompute. The linears of swapped layers
go through :class:`SwappedLinear`, which does not save the weight for backward but copies
it again when the input gradient is computed, so no device copy outlives its use. LoRA
weights, norms and other small parameters stay on the device. Results are exact: the
same operations run on the same values.

Activation offload (:func:`offloaded_activations`) is ``torch.autograd.graph.save_on_cpu``
around the layers; with gradient checkpointing, what it moves is each layer's input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import dequantized

OffloadHooks = Callable[[bool], contextlib.AbstractContextManager]
"""Makes the saved-tensor hooks context used around the layers; the argument is ``pin_memory``."""


def offloaded_activations(pin_memory: bool) -> contextlib.AbstractContextManager:
    """Tensors saved for backward are kept in (pinned) host memory and copied back when needed."""
    return torch.autograd.graph.save_on_cpu(pin_memory=pin_memory)


def expert_linear(x: Tensor, weight: Tensor, sizes: list[int] | None, dtype: torch.dtype) -> Tensor:
    """``x @ weight.T`` in ``dtype``, returned in ``x``'s dtype.

    With ``sizes``, ``x`` is split along dim 1 into ``len(sizes)`` segments and ``weight``
    into as many experts along its output dim; segment ``i`` uses expert ``i``.
    """
    if sizes is None:
        return F.linear(x.to(dtype), weight).to(x.dtype)
    parts = [F.linear(p.to(dtype), w) for p, w in zip(torch.split(x, sizes, dim=1), weight.chunk(len(sizes)))]
    return torch.cat(parts, dim=1).to(x.dtype)


class SwappedLinear(torch.autograd.Function):
    """:func:`expert_linear` with a frozen, swapped weight that is fetched again in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, module: nn.Module, sizes: list[int] | None, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        ctx.module, ctx.sizes, ctx.dtype, ctx.in_dtype = module, sizes, dtype, x.dtype
        return expert_linear(x, module.swap.weight(module, dtype), sizes, dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w = ctx.module.swap.weight(ctx.module, ctx.dtype)
        g = grad.to(ctx.dtype)
        if ctx.sizes is None:
            gx = g @ w
        else:
            gx = torch.cat([gi @ wi for gi, wi in zip(torch.split(g, ctx.sizes, dim=1), w.chunk(len(ctx.sizes)))], dim=1)
        return gx.to(ctx.in_dtype), None, None, None


class BlockSwap:
    """Host-resident frozen weights for ``layers``; at most two of them on the device at a time.

    Swappable modules are those with a ``swap`` attribute (the model's block linears);
    only frozen weights are swapped. Call :meth:`restore` before reading or merging the
    base weights (export), which puts every weight back on the device for good.
    """

    def __init__(self, layers: Sequence[nn.Module], device: torch.device | str, pin_memory: bool | None = None) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        pin = cuda if pin_memory is None else pin_memory
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._linears: list[list[nn.Module]] = []
        self._host: dict[nn.Module, Tensor] = {}
        self._hooks = []
        self._pending: tuple[int, dict[nn.Module, Tensor], object] | None = None
        self._last = -1
        self._index: dict[nn.Module, int] = {}
        for i, layer in enumerate(layers):
            linears = [m for m in layer.modules() if hasattr(m, "swap") and not m.weight.requires_grad]
            for m in linears:
                if m.weight.numel() == 0 or m.swap is not None:
                    raise ValueError("a layer is already swapped; apply block swap once")
                host = m.weight.detach().to("cpu", copy=True)
                self._host[m] = host.pin_memory() if pin else host
                m.weight.data = self._empty(m)
                m.swap = self
            self._linears.append(linears)
            self._index[layer] = i
            self._hooks.append(layer.register_forward_pre_hook(self._before))
            self._hooks.append(layer.register_forward_hook(self._after))

    @property
    def host_bytes(self) -> int:
        """Bytes of the swapped weights held on the host."""
        return sum(t.numel() * t.element_size() for t in self._host.values())

    def weight(self, module: nn.Module, dtype: torch.dtype) -> Tensor:
        """The module's weight on the device in ``dtype``: the fetched copy, or a transient one (backward)."""
        w = module.weight
        if w.numel() == 0:
            w = self._copy(module)
        return dequantized(w, module.fp8_scale, dtype)

    def restore(self, device: torch.device | str | None = None) -> None:
        """Put every swapped weight back, on the device (or on ``device``, e.g. the host), and remove the hooks."""
        for h in self._hooks:
            h.remove()
        for m, host in self._host.items():
            m.weight.data = host.to(device or self.device, copy=True)
            m.swap = None
        self._hooks, self._host, self._pending = [], {}, None

    # -- hooks -------------------------------------------------------------------

    def _before(self, layer: nn.Module, _args: object) -> None:
        i = self._index[layer]
        direction = 1 if i > self._last else -1  # the checkpointed recompute walks backwards
        self._last = i
        if self._pending is not None and self._pending[0] == i:
            _, tensors, event = self._pending
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
                for t in tensors.values():
                    t.record_stream(torch.cuda.current_stream(self.device))
        else:
            tensors = {m: self._copy(m) for m in self._linears[i]}
        self._pending = None
        for m, t in tensors.items():
            m.weight.data = t
        if 0 <= i + direction < len(self._linears):
            self._prefetch(i + direction)

    def _after(self, layer: nn.Module, _args: object, _output: object) -> None:
        for m in self._linears[self._index[layer]]:
            m.weight.data = self._empty(m)

    # -- copies ------------------------------------------------------------------

    def _prefetch(self, i: int) -> None:
        if self._stream is None:
            self._pending = (i, {m: self._copy(m) for m in self._linears[i]}, None)
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            tensors = {m: self._host[m].to(self.device, non_blocking=True) for m in self._linears[i]}
            event = self._stream.record_event()
        self._pending = (i, tensors, event)

    def _copy(self, m: nn.Module) -> Tensor:
        return self._host[m].to(self.device, copy=True, non_blocking=self._stream is not None)

    def _empty(self, m: nn.Module) -> Tensor:
        return torch.empty(0, dtype=self._host[m].dtype if m in self._host else m.weight.dtype, device=self.device)


def apply_block_swap(model: nn.Module, blocks: int, device: torch.device | str) -> BlockSwap | None:
    """Swap the frozen weights of the last ``blocks`` transformer layers of ``model`` (PEFT-wrapped or not).

    Returns the :class:`BlockSwap` (``None`` for 0). DoRA reads the base weight outside
    the linear and cannot be swapped.
    """
    from .transformer import HappyHorseTransformer

    if blocks == 0:
        return None
    base = next((m for m in model.modules() if isinstance(m, HappyHorseTransformer)), None)
    if base is None:
        raise TypeError("block swap needs a HappyHorseTransformer (optionally wrapped by PEFT)")
    layers = list(base.block.layers)
    if not 0 < blocks <= len(layers):
        raise ValueError(f"model.blocks_to_swap = {blocks}: must be in 0..{len(layers)} (the model has {len(layers)} layers)")
    if any(n.endswith("lora_magnitude_vector.default") or "lora_magnitude_vector" in n for n, _ in model.named_parameters()):
        raise ValueError("model.blocks_to_swap does not work with lora.use_dora (DoRA reads the swapped base weight); set one off")
    base.checkpoint_early_stop = False  # the recompute must reach the release hook
    return BlockSwap(layers[len(layers) - blocks :], device)
