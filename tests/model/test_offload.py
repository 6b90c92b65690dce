"""Block swap and activation offload are exact, and really move what they claim to."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig, offload
from hhtune.model.linears import SwappableLinear
from hhtune.model.placement import apply_block_swap, host_resident_keys, place_model

SWAPPED = 5  # layers 3..7 of the tiny preset: shared (LoRA) and sandwich layers


def _lora_model(checkpointing: bool, seed: int = 0, fp8: bool = False):
    torch.manual_seed(seed)
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    for m in model.modules() if fp8 else ():
        if isinstance(m, SwappableLinear):  # FP8 storage with a per-row scale
            scale = m.weight.detach().float().abs().amax(dim=1, keepdim=True) / 448.0
            m.weight = torch.nn.Parameter((m.weight.detach().float() / scale).to(torch.float8_e4m3fn),
                                          requires_grad=False)
            m.fp8_scale = scale
    model.set_compute_dtype("fp32")
    model.enable_gradient_checkpointing(checkpointing)
    peft = add_lora(model, LoraSettings(rank=4))
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # B starts at zero; make every LoRA gradient non-trivial
            p.data = torch.randn(p.shape, generator=g) * 0.1
    return model, peft


def _loss(peft) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    video, audio, text = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
                          torch.randn(1, 6, 32, generator=g))
    v, a = peft(video, audio, text)
    return (v * torch.randn(v.shape, generator=g)).sum() + (a * torch.randn(a.shape, generator=g)).sum()


def _grads(peft) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in peft.named_parameters() if p.requires_grad}


def _swapped_weights(model) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if getattr(m, "swap", None) is not None]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_block_swap_is_exact_and_releases_weights_between_uses(checkpointing):
    _, ref = _lora_model(checkpointing)
    ref_loss = _loss(ref)
    ref_loss.backward()
    model, peft = _lora_model(checkpointing)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    swap = apply_block_swap(peft, SWAPPED, "cpu")
    weights = _swapped_weights(model)
    swapped_keys = [k for k in state_before if re.fullmatch(r"block\.layers\.[3-7]\.\w+\.\w+(\.base_layer)?\.weight", k)
                    and "norm" not in k]  # fmt: skip
    assert len(weights) == len(swapped_keys) == 4 * SWAPPED
    assert swap.host_bytes == sum(state_before[k].nbytes for k in swapped_keys)
    resident_during_forward = []
    for layer in model.block.layers:  # the fetch hook runs first, so this sees the fetched layer
        layer.register_forward_pre_hook(
            lambda *_: resident_during_forward.append(sum(w.untyped_storage().nbytes() > 0 for w in weights)))
    loss = _loss(peft)
    assert all(w.untyped_storage().nbytes() == 0 for w in weights)  # released after forward
    loss.backward()
    assert all(w.untyped_storage().nbytes() == 0 for w in weights)  # and after backward
    # at most the running layer and the prefetched one: 4 linears each
    assert max(resident_during_forward) <= 8 and resident_during_forward[:3] == [0, 0, 0]
    assert torch.equal(loss, ref_loss)
    grads, ref_grads = _grads(peft), _grads(ref)
    assert ref_grads.keys() == grads.keys() and len(grads) > 0
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name
    swap.restore()
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items() if "lora" not in k)


def test_block_swap_fails_loudly_on_bad_settings():
    _, peft = _lora_model(False)
    with pytest.raises(ValueError, match=r"model.blocks_to_swap = 9: must be in 0..8"):
        apply_block_swap(peft, 9, "cpu")
    assert apply_block_swap(peft, 0, "cpu") is None
    dora = add_lora(HappyHorseTransformer(ModelConfig.preset("tiny")), LoraSettings(rank=2, use_dora=True))
    with pytest.raises(ValueError, match="use_dora"):
        apply_block_swap(dora, 2, "cpu")


class _CountingHostOffload(offload.HostOffload):
    packed: ClassVar[list[tuple[int, ...]]] = []

    def __init__(self, pin_memory: bool) -> None:
        super().__init__(pin_memory)
        inner = self.pack_hook

        def pack(t: torch.Tensor):
            _CountingHostOffload.packed.append(tuple(t.shape))
            return inner(t)

        self.pack_hook = pack


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_offload_is_exact_and_goes_through_the_host_hooks(checkpointing, monkeypatch):
    _, ref = _lora_model(checkpointing)
    ref_loss = _loss(ref)
    ref_loss.backward()
    monkeypatch.setattr(offload, "HostOffload", _CountingHostOffload)
    _CountingHostOffload.packed = []
    model, peft = _lora_model(checkpointing)
    model.enable_activation_offload()
    loss = _loss(peft)
    loss.backward()
    assert torch.equal(loss, ref_loss)
    for name, g in _grads(ref).items():
        assert torch.equal(dict(peft.named_parameters())[name].grad, g), name
    hidden = (1, 8 + 5 + 6, 64)  # [B, video+audio+text tokens, hidden]: the residual stream
    n_hidden = _CountingHostOffload.packed.count(hidden)
    if checkpointing:  # exactly the layer inputs were saved: the 6 layers after the frozen first two
        assert n_hidden == 6, _CountingHostOffload.packed
    else:  # everything the layers save goes to the host, far more than one tensor per layer
        assert len(_CountingHostOffload.packed) > 10 * 8


@pytest.mark.parametrize("fp8", [False, True])
def test_swap_and_offload_together_with_checkpointing_are_exact(fp8):
    _, ref = _lora_model(True, fp8=fp8)
    ref_loss = _loss(ref)
    ref_loss.backward()
    model, peft = _lora_model(True, fp8=fp8)
    model.enable_activation_offload()
    apply_block_swap(peft, 8, "cpu")
    loss = _loss(peft)
    loss.backward()
    assert torch.equal(loss, ref_loss)
    for name, g in _grads(ref).items():
        assert torch.equal(dict(peft.named_parameters())[name].grad, g), name


class _HostReads(TorchDispatchMode):
    """Counts bytes copied out of the given host storages, and any other op that reads them."""

    def __init__(self, host_ptrs: set[int]) -> None:
        super().__init__()
        self.host, self.copied, self.other = host_ptrs, 0, []

    def _is_host(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.untyped_storage().data_ptr() in self.host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.copy_.default and self._is_host(args[1]):
            self.copied += args[1].nbytes
        elif any(self._is_host(a) for a in args):
            self.other.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("checkpointing,offload_too", [(True, False), (True, True), (False, False)])
def test_block_swap_copies_each_weight_at_most_twice_per_step_into_reused_buffers(checkpointing, offload_too):
    model, peft = _lora_model(checkpointing)
    if offload_too:  # the reentrant checkpoint path
        model.enable_activation_offload()
    linears = [m for layer in model.block.layers[8 - SWAPPED :] for m in layer.modules()
               if isinstance(m, SwappableLinear)]
    host_ptrs = {m.weight.untyped_storage().data_ptr() for m in linears}
    swap = apply_block_swap(peft, SWAPPED, "cpu")
    seen: list[set[int]] = []
    for layer in model.block.layers[8 - SWAPPED :]:
        layer.register_forward_pre_hook(lambda *_: seen[-1].update(m.weight.untyped_storage().data_ptr()
                                                                   for m in linears
                                                                  if m.weight.numel()))  # fmt: skip
    per_step = []
    for _ in range(3):
        seen.append(set())
        counter = _HostReads(host_ptrs)
        with counter:
            _loss(peft).backward()
        assert counter.other == []  # no allocating copy (.to, clone) of a host weight
        per_step.append(counter.copied)
        if len(per_step) == 1:
            allocated = swap.stats.buffers_allocated
    assert swap.stats.buffers_allocated == allocated == 1 + swap.prefetch  # nothing allocated after warm-up
    assert seen[1] <= seen[0] and seen[2] <= seen[0]  # the weights land in the same buffers every step
    assert all(w == 0 for w in [m.weight.numel() for m in linears])
    # forward, then once in backward (fetched by the recompute, or without checkpointing by the
    # layer's first linear backward) and kept until the backward leaves the layer
    assert per_step == [2 * swap.host_bytes] * 3


def test_place_model_keeps_the_swapped_linears_on_the_host_and_moves_the_rest():
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    place_model(model, "meta", SWAPPED)
    on_host = {k for k, v in model.state_dict().items() if not v.is_meta}
    assert on_host == host_resident_keys(model, SWAPPED) and len(on_host) == 4 * SWAPPED
    assert all(k.startswith(tuple(f"block.layers.{i}." for i in range(3, 8))) for k in on_host)


def test_model_modules_import_each_other_without_cycles():
    folder = Path(offload.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                            and n.module}
    assert "transformer" not in graph["offload"] and "offload" in graph["transformer"]

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m, set())]
