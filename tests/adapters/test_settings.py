"""LoRA settings: what they select, and bad settings named."""

from __future__ import annotations

import pytest

from hhtune.adapters.settings import LoraSettings, target_module_names
from hhtune.model import ModelConfig


def test_bad_lora_settings_are_named():
    cfg = ModelConfig.preset("tiny")
    with pytest.raises(ValueError, match=r"lora.layers \[9\] cannot be adapted: indices must be in 0..7.*sandwich"):
        target_module_names(cfg, LoraSettings(layers=[0, 3, 9]))
    with pytest.raises(ValueError, match="use_dora cannot adapt the sandwich layers"):
        target_module_names(cfg, LoraSettings(layers="all", use_dora=True))
    with pytest.raises(ValueError, match="experts must name at least one"):
        LoraSettings(experts=[])
    with pytest.raises(ValueError, match="'video', 'audio' or 'text'"):
        LoraSettings(experts=["speech"])
    with pytest.raises(ValueError, match="linear_qkv"):
        LoraSettings(targets=["qkv"])
    with pytest.raises(ValueError, match="at least one"):
        LoraSettings(targets=[])
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        LoraSettings(rnak=4)
