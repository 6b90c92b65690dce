"""Adapter files: round trips through every format, merges, key layouts, and every bad file's message."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hhtune import adapters
from hhtune.export import AdapterError, export_adapter, read_adapter
from hhtune.export.__main__ import main as export_main
from hhtune.lora import LoraSettings, add_lora
from hhtune.model import HappyHorseTransformer, ModelConfig, load_checkpoint, save_checkpoint


def _base(seed: int = 0) -> HappyHorseTransformer:
    torch.manual_seed(seed)
    return HappyHorseTransformer(ModelConfig.preset("tiny")).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 3, 32, generator=g)


def _trained(seed: int = 0, rank: int = 4, **kw):
    model = add_lora(_base(), LoraSettings(rank=rank, alpha=2 * rank, init="gaussian", **kw))
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _out(model):
    with torch.no_grad():
        v, a = model(*_inputs())
    return torch.cat([v.flatten(), a.flatten()])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_checkpoint(_base(), tmp_path_factory.mktemp("base") / "base", max_shard_size=40_000)


@pytest.mark.parametrize("fmt,dtype,tol", [("peft", "fp32", 0), ("comfyui", "fp32", 0), ("kohya", "fp32", 0),
                                          ("comfyui", "bf16", 1e-2), ("kohya", "fp16", 1e-2)])  # fmt: skip
def test_each_format_round_trips_to_the_same_output(tmp_path, fmt, dtype, tol):
    """Exact in fp32; within the adapter dtype's rounding otherwise (relative L2 of the output)."""
    trained = _trained()
    want = _out(trained)
    path = export_adapter(trained, fmt, tmp_path / fmt, dtype=dtype)
    got = _out(adapters.load(path, _base()))
    assert float((got - want).norm()) <= tol * float(want.norm())


def test_rslora_scale_survives_generic_formats(tmp_path):
    trained = _trained(use_rslora=True)
    got = _out(adapters.load(export_adapter(trained, "comfyui", tmp_path / "c.safetensors", dtype="fp32"), _base()))
    torch.testing.assert_close(got, _out(trained), rtol=0, atol=1e-6)


def test_peft_loads_the_peft_export_itself(tmp_path):
    from peft import PeftModel

    trained = _trained()
    path = export_adapter(trained, "peft", tmp_path / "peft", dtype="fp32")
    loaded = PeftModel.from_pretrained(_base(), str(path)).eval()
    torch.testing.assert_close(_out(loaded), _out(trained), rtol=0, atol=0)


def test_generic_keys_are_comfyui_generic_lora_keys(tmp_path):
    trained = _trained()
    path = export_adapter(trained, "comfyui", tmp_path / "c.safetensors")
    keys = set(load_file(path))
    official = [k.removesuffix(".weight") for k in _base().state_dict() if k.endswith(".weight")]
    adapted = [m for m in official if m.split(".")[-1] in ("linear_qkv", "linear_proj", "up_gate_proj", "down_proj")
               and 2 <= int(m.split(".")[2]) <= 5]  # fmt: skip
    expected = {f"diffusion_model.{m}.{s}" for m in adapted for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert keys == expected
    state = load_file(path)
    assert state["diffusion_model.block.layers.2.attention.linear_qkv.lora_A.weight"].shape == (4, 64)
    assert state["diffusion_model.block.layers.2.attention.linear_qkv.lora_B.weight"].shape == (132, 4)
    assert float(state["diffusion_model.block.layers.2.attention.linear_qkv.alpha"]) == 8.0
    kohya = load_file(export_adapter(trained, "kohya", tmp_path / "k.safetensors"))
    assert "lora_unet_block_layers_2_attention_linear_qkv.lora_down.weight" in kohya


def test_metadata_in_every_header(tmp_path):
    trained = _trained()
    meta = {"trigger_words": ["hhbrand"], "languages": ["en", "zh"], "training_steps": 42, "recipe_hash": "abc"}
    for fmt in ("comfyui", "kohya"):
        path = export_adapter(trained, fmt, tmp_path / f"{fmt}.safetensors", metadata=meta)
        with safe_open(path, "pt") as f:
            m = json.loads(f.metadata()["hhtune"])
        assert m["rank"] == 4 and m["alpha"] == 8.0 and m["layers"] == [2, 3, 4, 5] and m["trigger_words"] == ["hhbrand"]
        assert m["training_steps"] == 42 and m["base_fingerprint"] and m["format_version"] == 1
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        export_adapter(trained, "comfyui", tmp_path / "x.safetensors", metadata={"trigger": "typo"})


def test_merged_checkpoint_equals_base_plus_adapter(tmp_path, base_dir):
    trained = _trained()
    want = _out(trained)
    merged = export_adapter(trained, "merged", tmp_path / "merged", base=base_dir)
    model = load_checkpoint(merged)  # official layout: index + shards, official dtypes
    assert (merged / "model.safetensors.index.json").is_file()
    assert model.state_dict()["block.layers.2.attention.linear_qkv.weight"].dtype == torch.bfloat16
    rel = lambda got: float((got - want).norm() / want.norm())  # noqa: E731
    assert rel(_out(model)) < 2e-2  # bf16 rounding of W + delta
    plain = HappyHorseTransformer(ModelConfig.preset("tiny"))
    state = {}
    for f in sorted(merged.glob("model-*.safetensors")):
        state.update(load_file(f))
    plain.load_state_dict(state)  # strict: exactly the official keys
    single = load_checkpoint(export_adapter(trained, "merged_single", tmp_path / "one.safetensors", base=base_dir))
    assert rel(_out(single.eval())) < 2e-2
    fp8 = export_adapter(trained, "merged_fp8", tmp_path / "fp8.safetensors", base=base_dir)
    assert any(k.endswith(".__fp8_scale") for k in load_file(fp8))
    assert rel(_out(load_checkpoint(fp8).eval())) < 0.1


def test_several_adapters_at_strengths_merged_or_stacked(tmp_path, base_dir):
    a, b = _trained(seed=0), _trained(seed=1)
    pa = export_adapter(a, "comfyui", tmp_path / "a.safetensors", dtype="fp32")
    pb = export_adapter(b, "kohya", tmp_path / "b.safetensors", dtype="fp32")
    stacked = adapters.load(pb, adapters.load(pa, _base(), strength=0.5), strength=0.25)
    assert len(stacked.active_adapters) == 2
    only_a = _out(adapters.load(pa, _base(), strength=0.5))
    assert not torch.allclose(_out(stacked), only_a, atol=1e-3)
    # unmerged stacking == merging both deltas into the weights (up to the bf16 storage of merged weights)
    merged = export_adapter(pa, "merged", tmp_path / "m", base=base_dir, strength=0.5, extra=[(pb, 0.25)])
    assert float((_out(load_checkpoint(merged)) - _out(stacked)).norm() / _out(stacked).norm()) < 2e-2
    unmerged_a = adapters.load(pa, _base(), strength=0.5)
    merged_a = load_checkpoint(export_adapter(pa, "merged", tmp_path / "ma", base=base_dir, strength=0.5))
    assert float((_out(merged_a) - _out(unmerged_a)).norm() / _out(unmerged_a).norm()) < 2e-2


def test_cli_converts_a_training_run_folder(tmp_path):
    trained = _trained()
    run = tmp_path / "run"
    trained.save_pretrained(str(run / "adapter"))
    (run / "run_info.json").write_text(json.dumps({"steps": 7, "recipe_hash": "r", "trigger_words": ["hh"], "languages": ["ja"],
                                                   "dataset_summary": {"clips": 3}, "base_fingerprint": None}))  # fmt: skip
    assert export_main([str(run), "--format", "comfyui", "--out", str(tmp_path / "o.safetensors")]) == 0
    meta = read_adapter(tmp_path / "o.safetensors").metadata
    assert meta.training_steps == 7 and meta.languages == ["ja"] and meta.trigger_words == ["hh"]


def test_bad_files_are_named(tmp_path, base_dir):
    trained = _trained()
    good = export_adapter(trained, "comfyui", tmp_path / "a.safetensors")
    with pytest.raises(AdapterError, match="trained on another base model.*super-resolution"):
        adapters.load(good, _base(seed=1))
    state = load_file(good)
    state["diffusion_model.block.layers.2.attention.linear_qkv.lora_A.weight"] = torch.zeros(4, 65)
    save_file(state, tmp_path / "shape.safetensors")
    with pytest.raises(AdapterError, match=r"linear_qkv has A \[4, 65\].*needs \[r, 64\]"):
        adapters.load(tmp_path / "shape.safetensors", _base())
    with safe_open(good, "pt") as f:
        meta = json.loads(f.metadata()["hhtune"])
    save_file(load_file(good), tmp_path / "rank.safetensors", {"hhtune": json.dumps({**meta, "rank": 16})})
    with pytest.raises(AdapterError, match="metadata says rank 16 but .* has rank 4"):
        adapters.load(tmp_path / "rank.safetensors", _base())
    with pytest.raises(AdapterError, match="is not a LoRA adapter.*load_checkpoint"):
        adapters.load(base_dir / "model-00001-of-00030.safetensors" if (base_dir / "model-00001-of-00030.safetensors").exists()
                      else sorted(base_dir.glob("model-*.safetensors"))[0], _base())  # fmt: skip
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterError, match="is not a safetensors file"):
        adapters.load(tmp_path / "junk.safetensors", _base())
    with pytest.raises(AdapterError, match="module 'block.layers.0.attention.linear_qkv' does not exist|not a plain linear"):
        save_file({"diffusion_model.block.layers.0.attention.linear_qkv.lora_A.weight": torch.zeros(2, 64),
                   "diffusion_model.block.layers.0.attention.linear_qkv.lora_B.weight": torch.zeros(396, 2)},
                  tmp_path / "mm.safetensors")  # fmt: skip
        adapters.load(tmp_path / "mm.safetensors", _base())
    with pytest.raises(ValueError, match="merges into a base checkpoint: pass base=BASE_DIR"):
        export_adapter(trained, "merged", tmp_path / "m")
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        export_adapter(trained, "onnx", tmp_path / "m")
    with pytest.raises(AdapterError, match="adapter not found"):
        adapters.load(tmp_path / "nothing.safetensors", _base())


def test_adapter_specs_on_the_command_line():
    from hhtune.adapters import parse_spec

    assert parse_spec("runs/brand/adapter:0.8") == ("runs/brand/adapter", 0.8)
    assert parse_spec("runs/brand/adapter") == ("runs/brand/adapter", 1.0)
    assert parse_spec("lora.safetensors:1.5") == ("lora.safetensors", 1.5)
