"""FP8 storage: dequantised one used expert at a time in bounded chunks, LoRA on it, and FP8 matmuls."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig, precision
from hhtune.model.linears import ExpertLinear, SwappableLinear, enable_fp8_compute, expert_linear
from hhtune.model.precision import FP8_DTYPE, fp8_matmul_unavailable
from hhtune.recipe import ModelSection


def _quantise(m: SwappableLinear, per_row: bool = False) -> None:
    w = m.weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().max()) / 448.0
    m.weight = torch.nn.Parameter((w / scale).to(FP8_DTYPE), requires_grad=False)
    m.fp8_scale = scale


def _fp8_model(seed: int = 0) -> HappyHorseTransformer:
    torch.manual_seed(seed)
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    for m in model.modules():
        if isinstance(m, SwappableLinear):
            _quantise(m)
    return model


class _Temporaries(TorchDispatchMode):
    """The largest fp32 tensor any op makes, and the elements converted out of FP8."""

    def __init__(self) -> None:
        super().__init__()
        self.largest_fp32, self.from_fp8 = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            self.largest_fp32 = max(self.largest_fp32, out.numel())
        if func is torch.ops.aten._to_copy.default and args[0].dtype == FP8_DTYPE:
            self.from_fp8 += args[0].numel()
        return out


@pytest.mark.parametrize("per_row", [False, True])
def test_fp8_dequantises_only_the_used_experts_in_bounded_chunks(per_row, monkeypatch):
    torch.manual_seed(0)
    lin = ExpertLinear(64, 48)
    _quantise(lin, per_row)
    lin.precision = "bf16"
    monkeypatch.setattr(precision, "DEQUANT_CHUNK_ELEMENTS", 64 * 8)  # 8 rows at a time
    sizes = [5, 0, 3]  # no audio tokens: the audio expert is never dequantised
    x = torch.randn(2, sum(sizes), 64).to(torch.bfloat16).requires_grad_()
    old = (lin.weight.float() * lin.fp8_scale).to(torch.bfloat16)  # what the whole-stack dequant made
    ref_x = x.detach().clone().requires_grad_()
    ref = expert_linear(ref_x, old, sizes, torch.bfloat16)
    counter = _Temporaries()
    with counter:
        out = lin(x, sizes)
    assert torch.equal(out, ref)
    assert counter.largest_fp32 <= 64 * 8  # one chunk, never a whole expert or the stack in fp32
    assert counter.from_fp8 == 2 * 48 * 64  # the video and text experts only
    g = torch.randn(out.shape).to(torch.bfloat16)
    with counter:
        out.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, ref_x.grad)
    assert counter.largest_fp32 <= 64 * 8


def test_lora_on_an_fp8_base_is_fp32_and_trains():
    model = _fp8_model()
    model.set_compute_dtype("fp32")
    peft = add_lora(model, LoraSettings(rank=4, layers="all"))
    lora = {n: p for n, p in peft.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    # initialised in fp32, not rounded through the base's e4m3 on the way
    assert all(not torch.equal(p, p.to(FP8_DTYPE).float()) for n, p in lora.items() if "lora_A" in n)
    base = {n: p.detach().clone() for n, p in peft.named_parameters() if p.dtype == FP8_DTYPE}
    assert len(base) == 4 * 8
    opt = torch.optim.AdamW(lora.values(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    video, audio, text = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
                          torch.randn(1, 6, 32, generator=g))
    losses = []
    for step in range(2):
        v, a = peft(video, audio, text)
        loss = v.square().mean() + a.square().mean()
        loss.backward()
        losses.append(float(loss.detach()))
        nonzero = {n for n, p in lora.items() if p.grad is not None and float(p.grad.abs().sum()) > 0}
        # B starts at zero, so A's gradient is zero at the first step and not after it; the last
        # layer's text rows after attention reach no output
        dead = {n for n in lora if "layers.7." in n and "lora_B_text" in n and "linear_qkv" not in n}
        assert nonzero == {n for n in lora if n not in dead and (step == 1 or "lora_B" in n)}
        opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] != losses[0]
    assert all(torch.equal(p.view(torch.uint8), base[n].view(torch.uint8)) for n, p in peft.named_parameters()
               if n in base)


@pytest.mark.skipif(fp8_matmul_unavailable("cpu") is not None, reason="this torch has no FP8 matmul on the CPU")
def test_fp8_compute_matches_dequantised_bf16():
    model = _fp8_model()
    model.set_compute_dtype("bf16")
    ref = _fp8_model()
    ref.set_compute_dtype("bf16")
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
              torch.randn(1, 6, 32, generator=g))
    n = enable_fp8_compute(model, "cpu")
    linears = [m for m in model.modules() if isinstance(m, SwappableLinear)]
    assert 0 < n == sum(m.fp8_compute for m in linears)
    calls = []
    real = torch._scaled_mm
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
        out_v, out_a = model(*inputs)
        ref_v, ref_a = ref(*inputs)
    assert len(calls) >= n  # the FP8 matmuls really ran
    for out, want in ((out_v, ref_v), (out_a, ref_a)):
        err = float((out - want).norm() / want.norm())
        assert 1e-4 < err < 0.1, err  # e4m3 inputs: close to, but not, the dequantised result
    # one linear: exactly the maths of e4m3 inputs times the e4m3 weight, up to bf16 output rounding
    lin = next(m for m in linears if isinstance(m, ExpertLinear) and m.fp8_compute)
    x = torch.randn(1, 12, lin.in_features, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        out = lin(x, [12, 0, 0]).float()  # one segment: one input scale
    x_scale = x.float().abs().max() / 448.0
    xq = (x.float() / x_scale).to(FP8_DTYPE).float() * x_scale
    want = expert_linear(xq, lin.weight.float() * lin.fp8_scale, [12, 0, 0], torch.float32)
    assert float((out - want).norm() / want.norm()) < 5e-3


def test_fp8_compute_is_refused_where_there_is_no_fp8_matmul(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (8, 0))
    assert "8.9 or newer" in fp8_matmul_unavailable("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    assert fp8_matmul_unavailable("cuda") is None
    with pytest.raises(ValueError, match="needs FP8 weights"):
        enable_fp8_compute(HappyHorseTransformer(ModelConfig.preset("tiny")),
                           "cpu" if fp8_matmul_unavailable("cpu") is None else "cuda")
    precision._probe_scaled_mm.cache_clear()

    def missing(*_a, **_k):
        raise NotImplementedError("no kernel for this backend")

    monkeypatch.setattr(torch, "_scaled_mm", missing)
    try:
        with pytest.raises(ValueError, match=r"model.fp8_compute: this torch build has no FP8 matmul"):
            enable_fp8_compute(_fp8_model(), "cpu")
    finally:
        precision._probe_scaled_mm.cache_clear()
    with pytest.raises(ValueError, match=r"fp8_compute needs model.fp8_base"):
        ModelSection(preset="tiny", fp8_compute=True)
