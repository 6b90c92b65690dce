"""Peak memory of one step of the real model code, run on fake tensors (no weights, no compute).

The model is built under ``FakeTensorMode`` and one training step (forward, loss,
backward) or one sampling forward is run through a small ``TorchDispatchMode`` that
counts the bytes of live storages created during the step: every tensor an op returns
is tracked, and a weakref finalizer drops its storage when the last tensor on it dies.
(``torch.distributed._tools.mem_tracker.MemTracker`` would be the library choice, but in
torch 2.13 it registers hooks on every parameter and fails on frozen ones.)

Parameters exist before the step, so they are not counted here; the planner adds them
from their sizes. Traces run on the (fake) CPU in bf16 compute, the CUDA numerics; the
one difference from CUDA is that attention takes its softmax in fp32 off CUDA, which
over-counts the q/k/v temporaries of one layer a little.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..adapters.inject import add_lora
from ..adapters.settings import LoraSettings
from ..model import HappyHorseTransformer, ModelConfig
from ..model.linears import SwappableLinear
from ..model.packing import audio_coords, padded_text_coords, video_coords


@dataclass(frozen=True)
class StepShape:
    """Token counts of one micro-batch: ``batch`` clips of ``video`` latents ``(T, H, W)``, audio and text."""

    batch: int
    video: tuple[int, int, int]
    audio: int
    text: int

    @property
    def tokens(self) -> int:
        """Sequence length of one clip."""
        t, h, w = self.video
        return t * (h // 2) * (w // 2) + self.audio + self.text


@dataclass(frozen=True)
class Trace:
    """Bytes created during a step on the device.

    ``activations``: live at the end of forward (saved for backward, the loss, the inputs);
    ``peak``: the most live at any time; ``layer_retained``: per layer, the bytes its
    forward left alive (its output plus what it saved), measured between layer starts.
    """

    activations: int
    peak: int
    layer_retained: dict[int, int]


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live storages created by ops under this mode, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [nbytes, live tensors on it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self._track(t)
        return out

    def _track(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]


def _host_offload(pin_memory: bool) -> torch.autograd.graph.saved_tensors_hooks:  # noqa: ARG001 -- signature fixed by OffloadHooks
    """``save_on_cpu`` as the device sees it: a saved tensor leaves, and comes back when unpacked."""

    def pack(t: Tensor):
        return tuple(t.shape), t.stride(), t.dtype, t.device

    def unpack(meta) -> Tensor:
        shape, stride, dtype, device = meta
        return torch.empty_strided(shape, stride, dtype=dtype, device=device)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _to_fp8(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, SwappableLinear):  # the block linears
            m.weight = nn.Parameter(torch.empty(m.weight.shape, dtype=torch.float8_e4m3fn, device="meta"),
                                    requires_grad=False)
            m.fp8_scale = torch.ones((), device="meta")


def build_fake_model(mode: FakeTensorMode, config: ModelConfig, lora: LoraSettings | None, *, fp8: bool,
                     checkpointing: bool, activation_offload: bool, compute: str = "bf16") -> nn.Module:  # fmt: skip
    """The model (with LoRA when given) built on meta, then given fake CPU parameters of ``mode``.

    PEFT is applied on meta because moving fake parameters swaps tensors, which the fake
    mode's weak references forbid.
    """
    with torch.device("meta"):
        model = HappyHorseTransformer(config)
    if fp8:
        _to_fp8(model)
    model.set_compute_dtype(compute)
    model.enable_gradient_checkpointing(checkpointing)
    if activation_offload:
        model.enable_activation_offload(hooks=_host_offload)
    model = add_lora(model, lora) if lora is not None else model.requires_grad_(False)
    cpu, convert = torch.device("cpu"), mode.fake_tensor_converter.from_meta_and_device
    for m in model.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(convert(mode, p, cpu), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = convert(mode, b, cpu)
    return model


def _inputs(config: ModelConfig, shape: StepShape) -> tuple[Tensor, ...]:
    b, (t, h, w) = shape.batch, shape.video
    nv = t * (h // 2) * (w // 2)
    video = torch.randn(b, nv, config.video_in_channels)
    audio = torch.randn(b, shape.audio, config.audio_in_channels)
    text = torch.randn(b, shape.text, config.text_in_channels)
    lengths = torch.full((b,), shape.text)
    coords = torch.cat([video_coords((t, h, w)).expand(b, nv, 9), audio_coords(shape.audio).expand(b, shape.audio, 9),
                        padded_text_coords(lengths, shape.text)], dim=1)  # fmt: skip
    return video, audio, text, coords


def trace(config: ModelConfig, lora: LoraSettings | None, shape: StepShape, *, training: bool, fp8: bool = False,
          checkpointing: bool = False, activation_offload: bool = False, compute: str = "bf16") -> Trace:  # fmt: skip
    """Bytes a training step (forward + MSE loss + backward) or a no-grad forward creates on the device.

    ``compute`` is the model's compute dtype: bf16, the CUDA numerics, unless measuring a CPU run.
    Every row of the batch is full length (no padding mask), the common case of one bucket.
    """
    mode = FakeTensorMode()
    model = build_fake_model(mode, config, lora if training else None, fp8=fp8, checkpointing=checkpointing,
                             activation_offload=activation_offload, compute=compute)  # fmt: skip
    base = next(m for m in model.modules() if isinstance(m, HappyHorseTransformer))
    tracker = LiveBytes()
    starts: dict[int, int] = {}
    def mark(i: int) -> None:  # the first call is the forward; later ones recompute
        starts.setdefault(i, tracker.live)

    for i, layer in enumerate(base.block.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: mark(i))
    with mode, tracker:
        video, audio, text, coords = _inputs(config, shape)
        t = shape.video[0]  # the plan of one full-length bucket: no padding mask; the local layers' frame window
        plan = base.attention_plan(None, video.shape[1], t, coords.shape[1], video.device)
        if not training:
            with torch.no_grad():
                out = base.forward_tokens(video, audio, text, coords, plan)
            del out
            return Trace(activations=0, peak=tracker.peak, layer_retained={})
        out_v, out_a = base.forward_tokens(video, audio, text, coords, plan)
        loss = out_v.float().square().mean() + out_a.float().square().mean()
        del out_v, out_a
        activations = tracker.live
        loss.backward()
        del loss
    retained = {i: starts[i + 1] - starts[i] for i in range(len(starts) - 1)}
    return Trace(activations=activations, peak=tracker.peak, layer_retained=retained)
