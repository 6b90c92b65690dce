"""Adding a LoRA for training: placement, parameter counts and a frozen base."""

from __future__ import annotations

import pytest
import torch

from hhtune.adapters.inject import add_lora, trainable_parameter_count
from hhtune.adapters.settings import LoraSettings, expected_trainable_parameters, target_module_names
from hhtune.model import HappyHorseTransformer, ModelConfig


@pytest.mark.parametrize("rank", [1, 32])
def test_15b_rank_r_trains_exactly_2360448_r_parameters(rank):
    with torch.device("meta"):
        model = HappyHorseTransformer(ModelConfig.preset("15b"))
    settings = LoraSettings(rank=rank)
    peft_model = add_lora(model, settings)
    assert trainable_parameter_count(peft_model) == 2_360_448 * rank
    assert expected_trainable_parameters(model.config, settings) == 2_360_448 * rank
    names = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    layers = {int(n.split("block.layers.")[1].split(".")[0]) for n in names}
    assert layers == set(range(4, 36))
    assert all("lora_A" in n or "lora_B" in n for n in names)


def test_dora_and_subset_counts_match_formula():
    with torch.device("meta"):
        model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    settings = LoraSettings(rank=4, targets=["linear_qkv", "down_proj"], layers=[2, 5], use_dora=True)
    peft_model = add_lora(model, settings)
    assert trainable_parameter_count(peft_model) == expected_trainable_parameters(model.config, settings) > 0
    assert target_module_names(model.config, settings) == [
        "block.layers.2.attention.linear_qkv", "block.layers.2.mlp.down_proj",
        "block.layers.5.attention.linear_qkv", "block.layers.5.mlp.down_proj",
    ]  # fmt: skip


def test_training_moves_only_the_adapter(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    peft_model = add_lora(tiny_model, LoraSettings(rank=4, init="gaussian"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    v, a, t = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
               torch.randn(1, 3, 32, generator=g))
    for _ in range(2):
        ov, oa = peft_model(v, a, t)
        loss = ov.square().mean() + oa.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    base = peft_model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" in name:
            assert p.dtype == torch.float32
            continue
        clean = name.replace(".base_layer", "")
        assert torch.equal(p, before[clean]) and p.dtype == before[clean].dtype, name
    lora_b = [p for n, p in base.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


@pytest.mark.parametrize(
    ("settings", "per_rank"),
    [
        # 15B, r * (in + k * out) per sandwich module with k experts, by hand: qkv out 5120 + 2 * 1024 + 40 = 7208;
        # GELU7 layers 0-3: A ins 5120 * 3 + 20480 = 35840, B outs 7208 + 5120 + 20480 + 5120 = 37928;
        # SwiGLU7 layers 36-39 (inner 13652): A ins 5120 * 3 + 13652 = 29012, B outs 7208 + 5120 + 27304 + 5120 = 44752.
        # A: 4 * 35840 + 4 * 29012 = 259_408; B per expert: 4 * 37928 + 4 * 44752 = 330_720.
        (LoraSettings(rank=1, layers="all"), 2_360_448 + 259_408 + 3 * 330_720),
        (LoraSettings(rank=1, layers=[0, 1, 2, 3, 36, 37, 38, 39], experts=["audio"]), 259_408 + 330_720),
        (LoraSettings(rank=1, embedders=["video", "audio", "text"]), 2_360_448 + (192 + 64 + 3584) + 3 * 5120),
    ],
)
def test_15b_expert_and_embedder_counts_are_exact(settings, per_rank):
    with torch.device("meta"):
        model = HappyHorseTransformer(ModelConfig.preset("15b"))
    peft_model = add_lora(model, settings)
    assert trainable_parameter_count(peft_model) == expected_trainable_parameters(model.config, settings) == per_rank
