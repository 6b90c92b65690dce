"""Attention without the math path: sliced padding, masked SDPA, Flex and FlashAttention-varlen agree."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from hhtune.model import HappyHorseTransformer, ModelConfig, pack_sample
from hhtune.model.attention import TokenGroups, attend, choose_kernel, flash_plan, flex_plan, sdpa_plan
from hhtune.recipe import LossSection
from hhtune.training.data import Batch
from hhtune.training.objective import flow_matching_loss

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _model(seed: int = 0) -> HappyHorseTransformer:
    torch.manual_seed(seed)
    return HappyHorseTransformer(ModelConfig.preset("tiny")).float()  # fp32 blocks: tight tolerances


def _ragged_qkv(seed: int = 0):
    """q, k, v ``[2, 13, heads, 16]`` (GQA 4:2) and the groups of two rows with padding in the middle and at the end."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 13, 4, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 13, 2, 16, generator=g, requires_grad=True) for _ in range(2))
    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[0, 6:9] = False  # padded audio between video and text
    valid[1, 10:] = False  # padded text at the end
    return q, k, v, TokenGroups.padded_rows(valid), valid


def _sliced_reference(q, k, v, valid):
    """Each row's real tokens alone through unmasked SDPA, scattered back (padding rows stay 0)."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        i = valid[b].nonzero()[:, 0]
        o = F.scaled_dot_product_attention(*(t[b : b + 1, i].transpose(1, 2) for t in (q, k, v)), enable_gqa=True)
        out = out.index_put((torch.tensor([b]), i), o.transpose(1, 2)[0])
    return out


def _grads(out, valid, *inputs):
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape) * valid[:, :, None, None]  # padding rows don't count
    return torch.autograd.grad((out * weight).sum(), inputs)


@pytest.fixture()
def flex_backward_on_cpu(monkeypatch):
    """torch has no Flex backward on the CPU; its unfused eager path still differentiates, so let it run."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *_a: None)


@pytest.mark.parametrize("build", [sdpa_plan, flex_plan, "flash"])
def test_kernels_match_sliced_attention_outputs_and_gradients(build, flex_backward_on_cpu, fake_flash_attn):
    q, k, v, groups, valid = _ragged_qkv()
    ref = _sliced_reference(q, k, v, valid)
    plan = flash_plan(groups) if build == "flash" else build(groups)
    out = attend(q, k, v, plan)
    mask = valid[:, :, None, None]
    torch.testing.assert_close(out * mask, ref, rtol=1e-6, atol=1e-6)
    if plan.kernel != "sdpa":  # padding attends nowhere: no work, zero output
        assert torch.count_nonzero(out[~valid]) == 0
    for got, want in zip(_grads(out, valid, q, k, v), _grads(ref, valid, q, k, v)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_packed_samples_attend_only_within_their_sample(fake_flash_attn):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 9, 4, 16, generator=g)
    k, v = (torch.randn(1, 9, 2, 16, generator=g) for _ in range(2))
    ids = torch.tensor([0, 1, 0, 0, 1, 2, 1, 2, 0])  # samples interleaved, as after the modality sort
    groups = TokenGroups.packed(ids)
    ref = torch.zeros_like(q)
    for s in range(3):
        i = (ids == s).nonzero()[:, 0]
        o = F.scaled_dot_product_attention(*(t[:, i].transpose(1, 2) for t in (q, k, v)), enable_gqa=True)
        ref[:, i] = o.transpose(1, 2)
    for plan in (sdpa_plan(groups), flex_plan(groups), flash_plan(groups)):
        torch.testing.assert_close(attend(q, k, v, plan), ref, rtol=1e-6, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_ragged_batch_rows_equal_each_row_alone_with_its_padding_sliced_off(backend):
    """Batch 2 (masked by the kernel) against batch 1 (padding sliced off, no mask), through the whole model."""
    model = _model()
    model.set_attention_backend(backend)
    g = torch.Generator().manual_seed(2)
    v, a, t = (torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 7, 64, generator=g),
               torch.randn(2, 9, 32, generator=g))
    a_len, t_len = torch.tensor([7, 4]), torch.tensor([0, 9])
    bv, ba = model(v, a, t, audio_lengths=a_len, text_lengths=t_len)
    for i in range(2):
        sv, sa = model(v[i : i + 1], a[i : i + 1], t[i : i + 1], audio_lengths=a_len[i : i + 1],
                       text_lengths=t_len[i : i + 1])
        torch.testing.assert_close(bv[i : i + 1], sv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ba[i : i + 1], sa, rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(sa[0, a_len[i] :]) == 0  # padded audio comes back as zeros


def test_sliced_text_gives_the_masked_gradients():
    """A dropped caption at batch 1 (text sliced to nothing) trains exactly like its masked row in a batch."""
    model = _model()
    g = torch.Generator().manual_seed(3)
    v, a, t = (torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 5, 64, generator=g),
               torch.randn(2, 6, 32, generator=g))
    grads = []
    for rows, t_len in ((slice(0, 2), torch.tensor([0, 6])), (slice(0, 1), torch.tensor([0]))):
        model.zero_grad()
        ov, oa = model(v[rows], a[rows], t[rows], text_lengths=t_len)
        (ov[0].square().mean() + oa[0].square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


class _SdpaSpy:
    def __init__(self, monkeypatch):
        self.calls = []
        real = F.scaled_dot_product_attention

        def spy(q, k, v, attn_mask=None, **kw):
            self.calls.append((attn_mask, k.shape[-2]))
            return real(q, k, v, attn_mask=attn_mask, **kw)

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)


def test_no_mask_reaches_sdpa_at_batch_1_in_a_caption_dropped_training_step(monkeypatch):
    model = _model()
    g = torch.Generator().manual_seed(4)
    nv, la = 2 * 2 * 2, 5
    batch = Batch(video=torch.randn(1, 48, 2, 4, 4, generator=g), audio=torch.randn(1, 7, 64, generator=g),
                  audio_lengths=torch.tensor([la]), text=torch.randn(1, 6, 32, generator=g),
                  text_lengths=torch.tensor([4]),
                  speech_mask=torch.zeros(1, 7), reference=None, has_reference=torch.tensor([False]),
                  index=0)  # fmt: skip
    spy = _SdpaSpy(monkeypatch)
    out = flow_matching_loss(model, batch, LossSection(), seed=0, caption_dropout=1.0)
    out.loss.backward()
    assert len(spy.calls) == model.config.num_layers
    assert all(mask is None for mask, _ in spy.calls)
    assert {length for _, length in spy.calls} == {nv + la}  # padding and the dropped caption are gone


def test_no_mask_reaches_sdpa_while_sampling(monkeypatch):
    from hhtune.sampling.generate import model_velocity_fn
    from hhtune.sampling.samplers import sample_distilled

    model = _model().eval()
    spy = _SdpaSpy(monkeypatch)
    fn = model_velocity_fn(model, torch.randn(1, 5, 32), 5)
    sample_distilled(fn, (1, 48, 2, 4, 4), (1, 5, 64), generator=torch.Generator().manual_seed(0), device="cpu")
    assert spy.calls and all(mask is None for mask, _ in spy.calls)


def test_flash_backward_is_deterministic_when_torch_is(fake_flash_attn, monkeypatch):
    q, k, v, groups, _ = _ragged_qkv()
    seen, kernel = [], fake_flash_attn.flash_attn_varlen_func

    def spy(*args, deterministic):
        seen.append(deterministic)
        return kernel(*args, deterministic=deterministic)

    monkeypatch.setattr(fake_flash_attn, "flash_attn_varlen_func", spy)
    attend(q, k, v, flash_plan(groups))
    torch.use_deterministic_algorithms(True)
    try:
        attend(q, k, v, flash_plan(groups))
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [False, True]


def test_kernel_choice_never_sends_a_mask_to_sdpa_on_cuda(fake_flash_attn, monkeypatch):
    bf16, fp32 = torch.bfloat16, torch.float32
    with pytest.raises(ValueError, match=r"model.attention = sdpa .*math kernel"):
        choose_kernel("sdpa", "cuda", bf16, training=True)
    assert choose_kernel("auto", "cuda", bf16, training=True) == "flash"
    assert choose_kernel("auto", "cuda", fp32, training=True) == "flex"  # flash-attn takes half precision only
    assert choose_kernel("auto", "cpu", fp32, training=True) == "sdpa"  # fused on the CPU, and the only backward there
    with pytest.raises(ValueError, match=r"model.attention = flex cannot train on the CPU"):
        choose_kernel("flex", "cpu", fp32, training=True)
    monkeypatch.delitem(sys.modules, "flash_attn")
    monkeypatch.setattr(sys, "path", [])
    assert choose_kernel("auto", "cuda", bf16, training=True) == "flex"
    from hhtune.cli import MissingDependencyError

    with pytest.raises(MissingDependencyError, match="pip install flash-attn"):
        choose_kernel("flash", "cuda", bf16, training=True)
    with pytest.raises(ValueError, match="allowed: auto, sdpa, flex, flash"):
        _model().set_attention_backend("math")


def test_rope_coordinates_are_checked_on_the_host_not_asserted_on_the_device(monkeypatch):
    def no_device_assert(*_):
        raise AssertionError("torch._assert_async is a fatal device-side assert on CUDA")

    monkeypatch.setattr(torch, "_assert_async", no_device_assert)
    model = _model().eval()
    g = torch.Generator().manual_seed(5)
    x, coords, mod = pack_sample(torch.randn(48, 2, 4, 4, generator=g), torch.randn(5, 64, generator=g),
                                 torch.randn(3, 32, generator=g))  # fmt: skip
    with torch.no_grad():
        model.forward_packed(x, coords, mod)
        model(torch.randn(1, 48, 2, 4, 4), torch.randn(1, 1, 64), torch.randn(1, 1, 32))  # 1-token audio and text
        bad = coords.clone()
        bad[-1, 3], bad[-1, 6] = 1.0, 4.0  # a size of 1 with a reference size of 4
        with pytest.raises(ValueError, match="invalid RoPE coordinates"):
            model.forward_packed(x, bad, mod)


@pytest.fixture()
def fake_flash_attn(monkeypatch):
    """A stand-in ``flash_attn`` whose varlen kernel runs unmasked SDPA per sequence (checks our packing)."""

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, deterministic=False):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and max_q == int((cu_q[1:] - cu_q[:-1]).max())
        parts = []
        for lo, hi in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            o = F.scaled_dot_product_attention(*(t[None, lo:hi].transpose(1, 2) for t in (q, k, v)), enable_gqa=True)
            parts.append(o.transpose(1, 2)[0])
        return torch.cat(parts)

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_varlen_func = flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return module
