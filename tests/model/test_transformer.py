"""Behaviour of the transformer users rely on: shapes, dtypes, batching, checkpointing."""

from __future__ import annotations

import pytest
import torch

from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.model.precision import resolve_compute_dtype

OFFICIAL_15B_NUMEL = 15_299_419_152
OFFICIAL_15B_KEYS = 331


def _random_inputs(seed: int, b: int = 1, t: int = 2, h: int = 4, w: int = 4, la: int = 5, lt: int = 6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 48, t, h, w, generator=g),
        torch.randn(b, la, 64, generator=g),
        torch.randn(b, lt, 32, generator=g),
    )


@pytest.mark.parametrize(("setting", "device", "dtype"), [
    ("auto", "cuda", torch.bfloat16), ("auto", "cuda:1", torch.bfloat16),
    ("auto", torch.device("cuda", 0), torch.bfloat16),
    ("auto", "cpu", torch.float32), ("auto", "meta", torch.float32),
    ("bf16", "cpu", torch.bfloat16), ("fp32", "cuda", torch.float32),
])  # fmt: skip
def test_compute_dtype_auto_is_bf16_on_cuda_and_fp32_elsewhere(setting, device, dtype):
    """Decided by the device the model runs on, not by the machine: this test needs no GPU."""
    assert resolve_compute_dtype(setting, device) == dtype


def test_15b_preset_on_meta_has_official_size_and_keys():
    with torch.device("meta"):
        model = HappyHorseTransformer(ModelConfig.preset("15b"))
    state = model.state_dict()
    assert len(state) == OFFICIAL_15B_KEYS
    assert sum(t.numel() for t in state.values()) == OFFICIAL_15B_NUMEL
    assert all(t.is_meta for t in state.values())
    assert state["block.layers.0.attention.linear_qkv.weight"].shape == (3 * (5120 + 2 * 8 * 128 + 40), 5120)
    assert state["block.layers.4.attention.linear_qkv.weight"].shape == (5120 + 2 * 8 * 128 + 40, 5120)
    assert state["block.layers.4.mlp.up_gate_proj.weight"].shape == (2 * 13652, 5120)
    assert state["block.layers.0.mlp.up_gate_proj.weight"].shape == (3 * 4 * 5120, 5120)
    assert state["adapter.rope.bands"].shape == (16,)


def test_dtype_policy_matches_official():
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    for name, p in model.state_dict().items():
        block_linear = name.startswith("block.") and name.endswith(("linear_qkv.weight", "linear_proj.weight",
                                                                    "up_gate_proj.weight", "down_proj.weight"))
        assert p.dtype == (torch.bfloat16 if block_linear else torch.float32), name


def test_shared_layers_are_plain_linears_peft_can_target():
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    cfg = model.config
    assert cfg.shared_layers == [2, 3, 4, 5]
    for i in cfg.shared_layers:
        layer = model.block.layers[i]
        for mod in (layer.attention.linear_qkv, layer.attention.linear_proj, layer.mlp.up_gate_proj,
                    layer.mlp.down_proj):
            assert isinstance(mod, torch.nn.Linear)
    assert not isinstance(model.block.layers[0].attention.linear_qkv, torch.nn.Linear)


@torch.no_grad()
def test_batch_rows_never_attend_across_samples(tiny_model):
    """Each row of a padded batch gives exactly what it gives alone."""
    v, a, t = _random_inputs(1, b=3, la=7, lt=9)
    a_len, t_len = torch.tensor([7, 4, 6]), torch.tensor([9, 3, 1])
    bv, ba = tiny_model(v, a, t, audio_lengths=a_len, text_lengths=t_len)
    for i in range(3):
        sv, sa = tiny_model(v[i : i + 1], a[i : i + 1, : a_len[i]], t[i : i + 1, : t_len[i]])
        torch.testing.assert_close(bv[i : i + 1], sv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ba[i : i + 1, : a_len[i]], sa, rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(ba[i, a_len[i] :]) == 0
    # and another row's content never leaks in
    v2 = v.clone()
    v2[1] = torch.randn_like(v2[1])
    cv, _ = tiny_model(v2, a, t, audio_lengths=a_len, text_lengths=t_len)
    torch.testing.assert_close(cv[0], bv[0], rtol=0, atol=0)
    assert not torch.allclose(cv[1], bv[1])


@torch.no_grad()
def test_packed_block_diagonal_equals_separate_samples(tiny_model):
    from hhtune.model import pack_sample

    samples = [_random_inputs(s, la=5 + s, lt=3 + s) for s in range(2)]
    packs = [pack_sample(v[0], a[0], t[0]) for v, a, t in samples]
    x = torch.cat([p[0] for p in packs])
    coords = torch.cat([p[1] for p in packs])
    mod = torch.cat([p[2] for p in packs])
    joint = tiny_model.forward_packed(x, coords, mod, sample_lengths=[p[0].shape[0] for p in packs])
    alone = torch.cat([tiny_model.forward_packed(*p) for p in packs])
    torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-5)
    mixed = tiny_model.forward_packed(x, coords, mod)  # one sequence: samples do see each other
    assert not torch.allclose(mixed, alone, atol=1e-3)


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    v, a, t = _random_inputs(2)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.enable_gradient_checkpointing(ckpt)
        ov, oa = model(v, a, t)
        (ov.square().mean() + oa.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=0, atol=0, msg=n)


def test_bad_lengths_and_shapes_are_named(tiny_model):
    v, a, t = _random_inputs(3)
    with pytest.raises(ValueError, match="text_lengths"):
        tiny_model(v, a, t, text_lengths=torch.tensor([99]))
    with pytest.raises(ValueError, match="even"):
        tiny_model(v[..., :3], a, t)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'.*allowed"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match=r"extra_forbidden|Extra inputs"):
        ModelConfig(num_layer=3)
    with pytest.raises(ValueError, match="mm_layers has layer indices \\[9\\]"):
        ModelConfig(num_layers=4, hidden_size=64, head_dim=16, num_query_groups=2, mm_layers=[9], gelu7_layers=[])
    # official config dicts (with runtime-only keys) load unchanged
    cfg = ModelConfig(**ModelConfig.preset("tiny").model_dump(), params_dtype="torch.float32", tread_config={})
    assert cfg == ModelConfig.preset("tiny")
