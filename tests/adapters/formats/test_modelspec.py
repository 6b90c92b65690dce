"""What other tools read in an adapter's header: the ModelSpec and ``ss_*`` keys."""

from __future__ import annotations

import json

from adapter_helpers import trained
from safetensors import safe_open

from hhtune.export import export_adapter


def test_modelspec_and_ss_keys_in_every_single_file_header(tmp_path):
    model = trained()
    meta = {"trigger_words": ["hhbrand"], "languages": ["en"], "resolution": "448x256", "title": "Brand voice",
            "training_steps": 12}  # fmt: skip
    for fmt in ("wan2gp", "comfyui", "kohya"):
        with safe_open(export_adapter(model, fmt, tmp_path / f"{fmt}.safetensors", metadata=meta), "pt") as f:
            h = f.metadata()
        assert h["modelspec.sai_model_spec"] == "1.0.0" and h["modelspec.architecture"] == "daVinci-MagiHuman/lora", fmt
        assert h["modelspec.title"] == "Brand voice" and h["modelspec.trigger_phrase"] == "hhbrand"
        assert h["modelspec.resolution"] == "448x256" and h["ss_network_dim"] == "4" and h["ss_network_alpha"] == "4.0"
        assert h["ss_steps"] == "12" and json.loads(h["hhtune"])["rank"] == 4


def test_an_adapter_of_a_random_weight_preset_says_so(tmp_path):
    model = trained()
    path = export_adapter(model, "comfyui", tmp_path / "t.safetensors", metadata={"base_name": "tiny"})
    with safe_open(path, "pt") as f:
        h = f.metadata()
    assert h["ss_base_model_version"] == "daVinci-MagiHuman layout, random weights (tiny preset)"
    assert "randomly initialised" in h["modelspec.description"]
    assert h["modelspec.architecture"] == "daVinci-MagiHuman/lora"  # still the layout other tools recognise
    with safe_open(export_adapter(model, "comfyui", tmp_path / "r.safetensors", metadata={"base_name": "/ckpt/base"}),
                   "pt") as f:  # fmt: skip
        h = f.metadata()
    assert h["ss_base_model_version"] == "daVinci-MagiHuman" and "modelspec.description" not in h
