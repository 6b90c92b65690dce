"""bf16 LoRA compute: fp32 master weights, bf16 matmuls, results within bf16 tolerance of fp32 LoRA."""

from __future__ import annotations

import torch
from peft import get_peft_model_state_dict
from torch.utils._python_dispatch import TorchDispatchMode

from hhtune.adapters.compute import set_lora_compute_dtype
from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig


def _peft(seed: int = 0):
    torch.manual_seed(seed)
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    model.set_compute_dtype("fp32")  # the base in fp32 keeps the CPU test fast; only LoRA changes
    peft = add_lora(model, LoraSettings(rank=4, layers="all"))
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # B starts at zero; make every delta and gradient non-trivial
            p.data = torch.randn(p.shape, generator=g) * 0.1
    return peft


def _batch():
    g = torch.Generator().manual_seed(7)
    return (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
            torch.randn(1, 6, 32, generator=g))


def _loss(peft) -> torch.Tensor:
    v, a = peft(*_batch())
    return v.square().mean() + a.square().mean()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


class _MatmulDtypes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def test_bf16_lora_deltas_and_grads_are_within_bf16_tolerance_of_fp32():
    ref, peft = _peft(), _peft()
    with torch.no_grad():
        peft.disable_adapter_layers()
        base_v, _ = peft(*_batch())
        peft.enable_adapter_layers()
        ref_v, _ = ref(*_batch())
    keys = set(get_peft_model_state_dict(peft))
    handle = set_lora_compute_dtype(peft, torch.bfloat16)
    counter = _MatmulDtypes()
    with torch.no_grad(), counter:
        v, _ = peft(*_batch())
    assert torch.bfloat16 in counter.dtypes and torch.float32 in counter.dtypes  # LoRA in bf16, the base in fp32
    err = _rel(v - base_v, ref_v - base_v)
    assert 0 < err < 2e-2, err  # the LoRA deltas, rounded to bf16 but not more
    _loss(ref).backward()
    _loss(peft).backward()
    lora = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lora.values())
    errs = {n: _rel(p.grad, ref_grads[n]) for n, p in lora.items() if float(ref_grads[n].norm()) > 0}
    worst = max(errs.items(), key=lambda kv: kv[1])
    assert len(errs) > 10 and max(errs.values()) < 5e-2 and sum(errs.values()) > 0, worst
    assert set(get_peft_model_state_dict(peft)) == keys  # saving is unchanged
    handle.remove()
    with torch.no_grad():
        assert torch.equal(peft(*_batch())[0], ref_v)  # and removing the hooks gives fp32 LoRA back


def test_bf16_lora_loss_curve_matches_fp32_lora():
    curves = []
    for dtype in (torch.float32, torch.bfloat16):
        peft = _peft()
        set_lora_compute_dtype(peft, dtype)
        opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=3e-3)
        losses = []
        for _ in range(30):
            loss = _loss(peft)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        curves.append(torch.tensor(losses))
    fp32, bf16 = curves
    assert fp32[-1] < 0.9 * fp32[0]  # it learns
    diff = ((bf16 - fp32).abs() / fp32).max()
    assert 0 < diff < 1e-2, (diff, fp32, bf16)  # within 1% at every one of the 30 steps
