"""Super-resolution adapters: the stage travels in every format, and an adapter applies to its own stage only.

The tiny SR model below has the first-stage tiny model's very weights (same seed), so the base fingerprint
cannot tell them apart: only the recorded variant does.
"""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import base_model, trained

from hhtune import adapters
from hhtune.adapters import AdapterError
from hhtune.adapters.formats.read import read_adapter
from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.export import export_adapter
from hhtune.model import HappyHorseTransformer, ModelConfig, save_checkpoint


def sr_model(variant: str = "sr_1080p", seed: int = 0) -> HappyHorseTransformer:
    torch.manual_seed(seed)
    return HappyHorseTransformer(ModelConfig.preset("tiny", variant)).eval()


def sr_trained(variant: str = "sr_1080p") -> torch.nn.Module:
    model = add_lora(sr_model(variant), LoraSettings(rank=2, alpha=4, init="gaussian"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    return model.eval()


@pytest.mark.parametrize("fmt", ["peft", "wan2gp", "comfyui", "kohya"])
def test_an_sr_adapter_names_its_stage_in_every_format_and_fits_only_it(tmp_path, fmt):
    # mutation: export_adapter not recording the module's SR variant -> variant None, the first stage takes it
    path = export_adapter(sr_trained(), fmt, tmp_path / f"sr.{fmt}", dtype="fp32")
    assert read_adapter(path).metadata.variant == "sr_1080p"
    adapters.load(path, sr_model())  # its own stage
    with pytest.raises(AdapterError, match="trained on the sr_1080p model, but this model is the first stage"):
        adapters.load(path, base_model())
    with pytest.raises(AdapterError, match="this model is the sr_540p"):
        adapters.load(path, sr_model("sr_540p"))


def test_a_first_stage_adapter_is_refused_by_the_sr_stage(tmp_path):
    # mutation: check_same_stage returning early for first-stage adapters -> the SR model takes it
    path = export_adapter(trained(), "comfyui", tmp_path / "base.safetensors", metadata={"variant": "distill"})
    adapters.load(path, base_model())
    with pytest.raises(AdapterError, match="trained on the distill model, but this model is the sr_1080p: "
                                           r"apply it to the first stage \(--adapter\)"):
        adapters.load(path, sr_model(), check_base=False)  # refused even where the base check is off
    legacy = export_adapter(trained(), "comfyui", tmp_path / "legacy.safetensors")  # names no variant
    adapters.load(legacy, sr_model())


def test_merging_into_a_checkpoint_of_the_other_stage_is_refused(tmp_path):
    # mutation: export_adapter without check_same_stage -> the SR adapter merges into the first-stage checkpoint
    save_checkpoint(base_model(), tmp_path / "first")
    save_checkpoint(sr_model(), tmp_path / "sr")
    adapter = export_adapter(sr_trained(), "peft", tmp_path / "adapter", dtype="fp32")
    export_adapter(adapter, "merged", tmp_path / "merged_sr", base=tmp_path / "sr")
    with pytest.raises(AdapterError, match="trained on the sr_1080p model, but this model is the first stage"):
        export_adapter(adapter, "merged", tmp_path / "merged_first", base=tmp_path / "first")
