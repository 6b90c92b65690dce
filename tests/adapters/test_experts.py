"""The sandwich layers' expert LoRA layer: one B per chosen expert."""

from __future__ import annotations

import torch

from hhtune.adapters.inject import add_lora, trainable_parameter_count
from hhtune.adapters.settings import LoraSettings, expected_trainable_parameters, target_module_names
from hhtune.model import HappyHorseTransformer, ModelConfig


def test_expert_settings_place_one_b_per_chosen_expert():
    with torch.device("meta"):
        model = HappyHorseTransformer(ModelConfig.preset("tiny"))
    settings = LoraSettings(rank=2, layers=[1, 2], experts=["text", "video"], embedders=["audio"])
    assert target_module_names(model.config, settings)[-1] == "adapter.audio_embedder"
    peft_model = add_lora(model, settings)
    names = {n.split("block.layers.1.")[-1] for n, p in peft_model.named_parameters()
             if p.requires_grad and "layers.1." in n}
    assert names == {f"{m}.{w}"
                     for m in ("attention.linear_qkv", "attention.linear_proj", "mlp.up_gate_proj", "mlp.down_proj")
                     for w in ("lora_A.default.weight", "lora_B_video.default.weight",
                               "lora_B_text.default.weight")}  # fmt: skip
    assert trainable_parameter_count(peft_model) == expected_trainable_parameters(model.config, settings)
