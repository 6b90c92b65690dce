"""Memory tools for big models on small cards: block swap and activation offload.

Block swap (:class:`BlockSwap`) keeps the frozen weights of the :class:`SwappableLinear` s of
some layers in (pinned, on CUDA) host memory. A layer's weights are copied into one of a
few device buffers, allocated once and reused, just before the layer runs; the next
``prefetch`` layers are copied ahead (on a side stream on CUDA, overlapping the compute).
In forward the weights are released when the layer ends. In backward a layer's weights
are fetched once (by its checkpointed recompute, or by its first linear's backward) and
kept until the backward has moved on to a lower layer (or ended), with the next lower
layers prefetched: each swapped weight crosses to the device at most twice per training
step (forward, and recompute or backward). LoRA weights, norms and other small
parameters stay on the device. Results are exact: the same operations run on the same values.

Activation offload (:func:`offloaded_activations`) keeps the tensors saved for backward in
(pinned) host memory; on CUDA the copies to the host run on a side stream without a host
sync. With gradient checkpointing, what it moves is each layer's input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .linears import SwappableLinear

OffloadHooks = Callable[[bool], contextlib.AbstractContextManager]
"""Makes the saved-tensor hooks context used around the layers; the argument is ``pin_memory``."""
_ALIGN = 256  # byte alignment of each weight inside a device buffer


class HostOffload(torch.autograd.graph.saved_tensors_hooks):
    """Saved CUDA tensors are copied to (pinned) host memory asynchronously and copied back when unpacked.

    The device-to-host copy runs on a side stream after the work that made the tensor; the
    copy back waits for it on the compute stream. Tensors already on the host are kept as they are.
    """

    def __init__(self, pin_memory: bool) -> None:
        streams: dict[torch.device, torch.cuda.Stream] = {}

        def pack(t: Tensor) -> tuple[torch.device, Tensor, object]:
            if not t.is_cuda:
                return t.device, t, None
            side = streams.setdefault(t.device, torch.cuda.Stream(t.device))
            side.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(side):
                host = torch.empty(t.size(), dtype=t.dtype, pin_memory=pin_memory)
                host.copy_(t, non_blocking=pin_memory)
                t.record_stream(side)
                return t.device, host, side.record_event()

        def unpack(packed: tuple[torch.device, Tensor, object]) -> Tensor:
            device, host, event = packed
            if event is None:
                return host
            torch.cuda.current_stream(device).wait_event(event)  # type: ignore[arg-type]
            return host.to(device, non_blocking=pin_memory)

        super().__init__(pack, unpack)


def offloaded_activations(pin_memory: bool) -> contextlib.AbstractContextManager:
    """Tensors saved for backward are kept in (pinned) host memory and copied back when needed."""
    return HostOffload(pin_memory)


@dataclass
class SwapStats:
    """What block swap moved: bytes copied to the device and device buffers allocated (cumulative)."""

    copied_bytes: int = 0
    buffers_allocated: int = 0


@dataclass
class _Resident:
    slot: int
    views: dict[SwappableLinear, Tensor]
    ready: torch.cuda.Event | None


class BlockSwap:
    """Host-resident frozen weights for ``layers``; at most ``1 + prefetch`` of them on the device at a time.

    Only frozen :class:`SwappableLinear` weights are swapped; the other parameters of the
    layers are moved to ``device``. Call :meth:`restore` before reading or merging the
    base weights (export), which puts every weight back for good.
    """

    def __init__(self, layers: Sequence[nn.Module], device: torch.device | str, pin_memory: bool | None = None,
                 prefetch: int = 1) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.stats = SwapStats()
        cuda = self.device.type == "cuda"
        pin = cuda if pin_memory is None else pin_memory
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._linears: list[list[SwappableLinear]] = []
        self._host: dict[SwappableLinear, Tensor] = {}
        self._offsets: dict[SwappableLinear, int] = {}
        self._hooks = []
        self._index: dict[nn.Module, int] = {}
        self._layer_of: dict[SwappableLinear, int] = {}
        for i, layer in enumerate(layers):
            linears = [m for m in layer.modules() if isinstance(m, SwappableLinear) and not m.weight.requires_grad]
            end = 0
            for m in linears:
                if m.swap is not None:
                    raise ValueError("a layer is already swapped; apply block swap once")
                w = m.weight.detach()
                host = w if w.device.type == "cpu" else w.to("cpu")
                self._host[m] = host.pin_memory() if pin and not host.is_pinned() else host
                self._offsets[m] = end
                end += -(-host.nbytes // _ALIGN) * _ALIGN
                m.weight.data = self._empty(m)
                m.swap = self
            for p in [*layer.parameters(), *layer.buffers()]:
                if p.numel() and p.device != self.device:
                    p.data = p.data.to(self.device)
            self._linears.append(linears)
            self._layer_of.update(dict.fromkeys(linears, i))
            self._index[layer] = i
            self._hooks.append(layer.register_forward_pre_hook(self._before))
            self._hooks.append(layer.register_forward_hook(self._after))
        self._slot_bytes = max((sum(-(-self._host[m].nbytes // _ALIGN) * _ALIGN for m in ls) for ls in self._linears),
                               default=0)
        self._slots: list[Tensor | None] = [None] * (1 + prefetch)
        self._free = list(range(len(self._slots)))
        self._resident: dict[int, _Resident] = {}
        self._task = -1

    @property
    def host_bytes(self) -> int:
        """Bytes of the swapped weights held on the host."""
        return sum(t.nbytes for t in self._host.values())

    def weight(self, module: SwappableLinear) -> Tensor:
        """The module's weight on the device; in backward its layer is made resident first.

        A layer's last linear can run its backward before the checkpointed recompute of the
        layer (it saves no tensor), and without checkpointing there is no recompute at all:
        either way the whole layer is fetched once and kept until the backward moves on.
        """
        if not module.weight.numel():
            if torch._C._current_graph_task_id() == -1:
                raise RuntimeError("a swapped linear ran outside its layer's forward; call BlockSwap.restore() first")
            self._make_resident(self._layer_of[module], backward=True)
        return module.weight

    def restore(self, device: torch.device | str | None = None) -> None:
        """Put every swapped weight back, on the device (or on ``device``, e.g. the host), and remove the hooks."""
        for h in self._hooks:
            h.remove()
        for i in list(self._resident):
            self._release(i)
        for m, host in self._host.items():
            m.weight.data = host.to(device or self.device, copy=True)
            m.swap = None
        self._hooks, self._host, self._slots, self._free = [], {}, [], []

    # -- hooks -------------------------------------------------------------------

    def _before(self, layer: nn.Module, _args: object) -> None:
        self._make_resident(self._index[layer], backward=torch._C._current_graph_task_id() != -1)

    def _after(self, layer: nn.Module, _args: object, _output: object) -> None:
        if torch._C._current_graph_task_id() == -1:  # in a recompute, keep the weights for the backward
            self._release(self._index[layer])

    def _make_resident(self, i: int, backward: bool) -> None:
        """Layer ``i``'s weights in place, the next ``prefetch`` layers (downwards in backward) on their way."""
        task = torch._C._current_graph_task_id()
        if backward and task != self._task:  # release what is left when this backward ends
            self._task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
        step = -1 if backward else 1  # the backward walks the layers downwards
        wanted = [j for j in range(i, i + step * (self.prefetch + 1), step) if 0 <= j < len(self._linears)]
        for j in [j for j in self._resident if j not in wanted]:  # layers whose backward is over, or stale prefetches
            self._release(j)
        for j in wanted:
            if j not in self._resident:
                self._fetch(j, ahead=j != i)
        current = self._resident[i]
        if current.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(current.ready)
            current.ready = None
        for m, view in current.views.items():
            m.weight.data = view

    def _end_backward(self) -> None:
        for j in list(self._resident):
            self._release(j)
        self._task = -1

    # -- buffers -----------------------------------------------------------------

    def _fetch(self, j: int, ahead: bool) -> None:
        slot = self._free.pop()
        views = self._views(slot, self._linears[j])
        if ahead and self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                for m, view in views.items():
                    self._copy(self._host[m], view)
                ready = self._stream.record_event()
        else:
            for m, view in views.items():
                self._copy(self._host[m], view)
            ready = None
        self._resident[j] = _Resident(slot, views, ready)

    def _release(self, j: int) -> None:
        res = self._resident.pop(j, None)
        if res is None:
            return
        for m in res.views:
            m.weight.data = self._empty(m)
        self._free.append(res.slot)

    def _views(self, slot: int, linears: list[SwappableLinear]) -> dict[SwappableLinear, Tensor]:
        buf = self._slots[slot]
        if buf is None:
            buf = self._slots[slot] = torch.empty(self._slot_bytes, dtype=torch.uint8, device=self.device)
            self.stats.buffers_allocated += 1
        out = {}
        for m in linears:
            host, start = self._host[m], self._offsets[m]
            out[m] = buf[start : start + host.nbytes].view(host.dtype).view(host.shape)
        return out

    def _copy(self, host: Tensor, view: Tensor) -> None:
        view.copy_(host, non_blocking=self._stream is not None)
        self.stats.copied_bytes += host.nbytes

    def _empty(self, m: SwappableLinear) -> Tensor:
        return torch.empty(0, dtype=self._host[m].dtype if m in self._host else m.weight.dtype, device=self.device)
