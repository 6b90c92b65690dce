"""Adapter export: every format round-trips, key layouts match ComfyUI's loader, merges equal base + adapter."""

from __future__ import annotations

import json

import pytest
import torch
from adapter_helpers import base_model, out, rel, trained
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file

from hhtune import adapters
from hhtune.export import FORMATS, AdapterError, export_adapter, read_adapter
from hhtune.export.__main__ import main as export_main
from hhtune.model import HappyHorseTransformer, ModelConfig, load_checkpoint, save_checkpoint

# Relative L2 error of the model output allowed per adapter dtype. fp32 must be exact. For bf16 and fp16 the floor
# is the model's own bf16 compute, not the adapter's storage: any change of the delta, however small, flips bf16
# roundings of block outputs that then propagate. Measured over seeds 0-2 (tiny, rank 4): bf16 5.7e-3..7.0e-3,
# fp16 5.0e-3..5.6e-3 - the same level, hence the same bound at 1.5x the largest. The storage precision itself is
# checked apart, on the tensors: ``_STORAGE`` is the unit roundoff of each dtype (2^-8 bf16, 2^-11 fp16).
_TOL = {"fp32": 0.0, "bf16": 1e-2, "fp16": 1e-2}
_STORAGE = {"fp32": 0.0, "bf16": 2.0**-8, "fp16": 2.0**-11}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny seed-0 base saved in the official sharded layout (several shards)."""
    return save_checkpoint(base_model(), tmp_path_factory.mktemp("base") / "base", max_shard_size=40_000)


@pytest.mark.parametrize("fmt", ["peft", "wan2gp", "comfyui", "kohya"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_each_format_round_trips_to_the_same_output(tmp_path, fmt, dtype):
    model = trained()
    want = out(model)
    path = export_adapter(model, fmt, tmp_path / fmt, dtype=dtype)
    loaded = adapters.load(path, base_model())
    got = out(loaded)
    assert rel(got, want) <= _TOL[dtype]
    assert rel(got, out(base_model())) > 0.01  # the adapter changes the output, so the comparison means something
    name = loaded.active_adapters[0]
    for i, layer in enumerate(model.get_base_model().block.layers[2:6], start=2):  # every element within one rounding
        mine, theirs = layer.mlp.down_proj, loaded.get_base_model().block.layers[i].mlp.down_proj
        for a, b in ((mine.lora_A["default"], theirs.lora_A[name]), (mine.lora_B["default"], theirs.lora_B[name])):
            err = ((b.weight - a.weight).abs() / a.weight.abs().clamp_min(1e-30)).max()
            assert err <= _STORAGE[dtype], (dtype, i, float(err))


def test_rslora_and_mixed_ranks_survive_every_format(tmp_path):
    model = trained(use_rslora=True)
    model.add_adapter("wide", LoraConfig(r=8, lora_alpha=3, target_modules=["block.layers.3.mlp.down_proj"]))
    want = out(model)  # only "default" is active
    for fmt in ("peft", "wan2gp", "comfyui", "kohya"):
        got = out(adapters.load(export_adapter(model, fmt, tmp_path / fmt, dtype="fp32"), base_model()))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    model.base_model.set_adapter(["default", "wide"])
    with pytest.raises(AdapterError, match=r"2 active adapters \['default', 'wide'\]: pass adapter_name"):
        export_adapter(model, "comfyui", tmp_path / "x.safetensors")
    assert read_adapter(export_adapter(model, "comfyui",
                                       tmp_path / "w.safetensors", adapter_name="wide")).described().rank == 8


def test_converting_between_formats_is_exporting_an_import(tmp_path):
    model = trained()
    kohya = export_adapter(model, "kohya", tmp_path / "k.safetensors", dtype="fp32", metadata={"trigger_words": ["hh"]})
    comfy = export_adapter(kohya, "comfyui", tmp_path / "c.safetensors", dtype="fp32")
    peft = export_adapter(comfy, "peft", tmp_path / "p", dtype="fp32")
    torch.testing.assert_close(out(adapters.load(peft, base_model())), out(model), rtol=0, atol=1e-6)
    assert read_adapter(peft).metadata.trigger_words == ["hh"]  # metadata travels through conversions


def test_peft_loads_the_peft_export_itself(tmp_path):
    from peft import PeftModel

    model = trained(rank=4, use_dora=True)
    path = export_adapter(model, "peft", tmp_path / "peft", dtype="fp32")
    loaded = PeftModel.from_pretrained(base_model(), str(path)).eval()
    torch.testing.assert_close(out(loaded), out(model), rtol=0, atol=0)


# The key conventions, pinned to the published loaders (not derived from hhtune's writers):
# - ComfyUI comfy/lora.py (comfyanonymous/ComfyUI), model_lora_keys_unet: for every diffusion-model weight key
#   "diffusion_model.<path>.weight" it accepts "lora_unet_<path with . -> _>" and the generic "diffusion_model.<path>";
#   load_lora reads "<stem>.lora_up.weight"/"lora_down" or "lora_B"/"lora_A" and "<stem>.alpha"; the patch is
#   W += strength * alpha / rank * up @ down, scale 1 without alpha.
# - kohya naming as musubi-tuner writes it (AkaneTendo25/musubi-tuner, branch magi-human, networks/lora.py):
#   "lora_unet_" + module path with "." -> "_", .lora_down.weight [r, in], .lora_up.weight [out, r], .alpha.
_MODULES = ("attention_linear_qkv", "attention_linear_proj", "mlp_up_gate_proj", "mlp_down_proj")
_PINNED = {
    "comfyui": {f"diffusion_model.block.layers.{i}.{m.replace('_', '.', 1)}.{s}"
                for i in (2, 3, 4, 5) for m in _MODULES for s in ("lora_A.weight", "lora_B.weight", "alpha")},
    "kohya": {f"lora_unet_block_layers_{i}_{m}.{s}"
              for i in (2, 3, 4, 5) for m in _MODULES for s in ("lora_down.weight", "lora_up.weight", "alpha")},
}  # fmt: skip
_EXAMPLES = {  # written out in full, as the loaders' docs and sources show them
    "comfyui": ("diffusion_model.block.layers.2.attention.linear_qkv.lora_A.weight",
                "diffusion_model.block.layers.2.attention.linear_qkv.lora_B.weight",
                "diffusion_model.block.layers.2.attention.linear_qkv.alpha"),
    "kohya": ("lora_unet_block_layers_2_attention_linear_qkv.lora_down.weight",
              "lora_unet_block_layers_2_attention_linear_qkv.lora_up.weight",
              "lora_unet_block_layers_2_attention_linear_qkv.alpha"),
}  # fmt: skip


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
def test_keys_are_the_published_conventions_and_patch_to_the_same_model(tmp_path, fmt):
    model = trained()
    lora = load_file(export_adapter(model, fmt, tmp_path / f"{fmt}.safetensors", dtype="fp32"))
    assert set(lora) == _PINNED[fmt]  # 4 targets x 4 shared layers, nothing a loader would warn about
    down, up, alpha = (lora[k] for k in _EXAMPLES[fmt])
    assert down.shape == (4, 64) and up.shape == (132, 4) and alpha.dim() == 0 and float(alpha) == 4.0  # alpha = rank
    # ComfyUI's patch with the pinned target names: W += alpha / rank * up @ down equals the PEFT model
    state = {k: v.clone() for k, v in base_model().state_dict().items()}
    for stem in {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in lora}:
        path = stem.removeprefix("diffusion_model.") if fmt == "comfyui" else _kohya_target(stem)
        a_key, b_key = (".lora_A.weight", ".lora_B.weight") if fmt == "comfyui" else (".lora_down.weight",
                                                                                      ".lora_up.weight")
        up, down = lora[stem + b_key], lora[stem + a_key]
        w = state[path + ".weight"]
        state[path + ".weight"] = (w.float() + float(lora[stem + ".alpha"]) / down.shape[0] * (up @ down)).to(w.dtype)
    plain = HappyHorseTransformer(ModelConfig.preset("tiny")).eval()
    plain.load_state_dict(state)
    assert rel(out(plain), out(model)) < 1.5e-2  # bf16 storage of the patched weights (measured 0.6-0.7%)


def _kohya_target(stem: str) -> str:
    """The official weight path of a kohya stem, from the pinned module list (layers and names literal above)."""
    for i in (2, 3, 4, 5):
        for m in _MODULES:
            if stem == f"lora_unet_block_layers_{i}_{m}":
                return f"block.layers.{i}.{m.replace('_', '.', 1)}"
    raise AssertionError(stem)


def test_metadata_in_every_header(tmp_path, base_dir):
    model = trained()
    meta = {"trigger_words": ["hhbrand"], "languages": ["en", "zh"], "training_steps": 42, "recipe_hash": "abc",
            "dataset_summary": {"clips": 9}}  # fmt: skip
    files = [export_adapter(model, f, tmp_path / f, base=base_dir, metadata=meta) for f in FORMATS]
    files = [f / "adapter_model.safetensors" if f.name == "peft" else f for f in files]
    files = [g for f in files for g in (sorted(f.glob("*.safetensors")) if f.is_dir() else [f])]
    assert len(files) >= 7
    for f in files:
        with safe_open(f, "pt") as sf:
            m = json.loads(sf.metadata()["hhtune"])
        assert m["rank"] == 4 and m["alpha"] == 8.0 and m["layers"] == [2, 3, 4, 5], f
        assert m["targets"] == ["down_proj", "linear_proj", "linear_qkv", "up_gate_proj"], f
        assert m["trigger_words"] == ["hhbrand"] and m["languages"] == ["en", "zh"] and m["training_steps"] == 42, f
        assert m["recipe_hash"] == "abc" and m["dataset_summary"] == {"clips": 9} and m["format_version"] == 1, f
        assert len(m["base_fingerprint"]) == 32, f
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        export_adapter(model, "comfyui", tmp_path / "x.safetensors", metadata={"trigger": "typo"})


def test_merged_checkpoint_equals_base_plus_adapter(tmp_path, base_dir):
    model = trained()
    want = out(model)
    merged = export_adapter(model, "merged", tmp_path / "merged", base=base_dir)
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = sorted(merged.glob("model-*.safetensors"))
    base_index = json.loads((base_dir / "model.safetensors.index.json").read_text())
    # The official loader (daVinci-MagiHuman inference/infra/checkpoint/load_model_checkpoint.py, as vendored in
    # AkaneTendo25/musubi-tuner src/musubi_tuner/magihuman/infra/checkpoint/load_model_checkpoint.py) reads
    # model.safetensors.index.json's weight_map and opens each named shard for its keys (else model.safetensors):
    # the same index name, shard names (model-0000i-of-0000n) and key placement as the base.
    assert len(shards) > 1 and set(index["weight_map"].values()) == {f.name for f in shards}
    assert index["weight_map"] == base_index["weight_map"]
    assert shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    for name in set(index["weight_map"].values()):  # every key is in the shard the index names
        with safe_open(merged / name, "pt") as f:
            assert {k for k, v in index["weight_map"].items() if v == name} == set(f.keys())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for f in shards
                                                  for t in load_file(f).values())
    state = {k: v for f in shards for k, v in load_file(f).items()}
    base_state = {k: v for f in sorted(base_dir.glob("model-*.safetensors")) for k, v in load_file(f).items()}
    # official dtype policy
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in base_state.items()}
    assert torch.equal(state["final_linear_video.weight"], base_state["final_linear_video.weight"])  # copied untouched
    plain = HappyHorseTransformer(ModelConfig.preset("tiny")).eval()
    plain.load_state_dict(state)  # strict: exactly the official keys
    assert rel(out(plain), want) < 2e-2  # bf16 rounding of W + delta
    assert rel(out(load_checkpoint(merged).eval()), want) < 2e-2  # the official-layout loader
    single = export_adapter(model, "merged_single", tmp_path, base=base_dir)
    assert single.name == "model_bf16.safetensors"
    assert {v.dtype for v in load_file(single).values() if v.is_floating_point()} == {torch.bfloat16}
    assert rel(out(load_checkpoint(single).eval()), want) < 3e-2
    fp32 = export_adapter(model, "merged_single", tmp_path / "fp32.safetensors", base=base_dir, dtype="fp32")
    assert rel(out(load_checkpoint(fp32).eval()), want) < 2e-2
    fp8 = load_file(export_adapter(model, "merged_fp8", tmp_path / "fp8.safetensors", base=base_dir))
    qkv = "block.layers.2.attention.linear_qkv.weight"
    assert fp8[qkv].dtype == torch.float8_e4m3fn and fp8[qkv + ".__fp8_scale"].shape == ()
    assert fp8["final_linear_video.weight"].dtype == torch.float32  # only the bf16 block linears are quantised
    for k, v in fp8.items():  # every FP8 weight has its fp32 per-tensor scale, and only those
        if v.dtype == torch.float8_e4m3fn:
            assert fp8[k + ".__fp8_scale"].dtype == torch.float32 and fp8[k + ".__fp8_scale"].dim() == 0
        elif k.endswith(".__fp8_scale"):
            assert fp8[k.removesuffix(".__fp8_scale")].dtype == torch.float8_e4m3fn
    # FP8 e4m3 keeps 3 mantissa bits: unit roundoff 2^-4 per weight with a per-tensor scale; over 8 layers the output
    # moved 4.8e-2..5.4e-2 (seeds 0-2), so 8e-2 is 1.5x the largest measured, well under the adapter's own effect (>0.8)
    assert rel(out(load_checkpoint(tmp_path / "fp8.safetensors").eval()), want) < 8e-2


def test_merging_an_fp8_base_dequantises_it(tmp_path, base_dir):
    model = trained()
    fp8_base = export_adapter(model, "merged_fp8", tmp_path / "fp8.safetensors", base=base_dir, strength=0.0)
    with pytest.warns(UserWarning, match="trained on another base model"):  # FP8 rounding changes the fingerprint
        merged = export_adapter(model, "merged", tmp_path / "m", base=fp8_base, check_base="warn")
    state = load_file(merged / "model.safetensors")
    assert not any(k.endswith("__fp8_scale") for k in state)
    assert state["block.layers.2.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert rel(out(load_checkpoint(merged).eval()), out(model)) < 8e-2  # the FP8 rounding of the base, as above


def test_several_adapters_merge_at_their_strengths(tmp_path, base_dir):
    a, b = trained(seed=0), trained(seed=1)
    pa = export_adapter(a, "comfyui", tmp_path / "a.safetensors", dtype="fp32")
    pb = export_adapter(b, "kohya", tmp_path / "b.safetensors", dtype="fp32")
    stacked = adapters.load(pb, adapters.load(pa, base_model(), strength=0.5), strength=-0.75)
    merged = export_adapter(pa, "merged", tmp_path / "m", base=base_dir, strength=0.5, extra=[(pb, -0.75)])
    assert rel(out(load_checkpoint(merged)), out(stacked)) < 2e-2
    with safe_open(max(merged.glob("model-*.safetensors")), "pt") as f:
        assert [m["strength"] for m in json.loads(f.metadata()["hhtune_merged_adapters"])] == [0.5, -0.75]
    only_a = export_adapter(pa, "merged", tmp_path / "ma", base=base_dir, strength=0.5)
    assert rel(out(load_checkpoint(only_a)), out(stacked)) > 5e-2  # the second adapter mattered


def test_export_is_atomic(tmp_path, base_dir, monkeypatch):
    """A merge that fails part-way leaves neither a half-written file nor a folder under the final name."""
    from hhtune.export import merge

    model = trained()
    calls = {"n": 0}
    real = merge._add_deltas

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(merge, "_add_deltas", failing)
    for fmt, target in (("merged", tmp_path / "m"), ("merged_single", tmp_path / "one.safetensors")):
        calls["n"] = 0
        with pytest.raises(OSError, match="disk full"):
            export_adapter(model, fmt, target, base=base_dir)
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left behind either


def test_cli_converts_a_training_run_folder(tmp_path, base_dir, capsys):
    model = trained()
    run = tmp_path / "run"
    model.save_pretrained(str(run / "adapter"))
    from hhtune.adapters.base_identity import base_model_id

    (run / "run_info.json").write_text(json.dumps({
        "steps": 7, "recipe_hash": "r", "trigger_words": ["hh"], "languages": ["ja"], "dataset_summary": {"clips": 3},
        "base_fingerprint": base_model_id(base_model()), "base": "tiny"}))  # fmt: skip
    assert export_main([str(run), "--format", "kohya", "--out", str(tmp_path / "o"), "--dtype", "fp32"]) == 0
    written = tmp_path / "o" / "adapter_kohya.safetensors"
    assert f"wrote {written}" in capsys.readouterr().out
    meta = read_adapter(written).metadata
    assert (meta.training_steps, meta.languages, meta.trigger_words, meta.base_name) == (7, ["ja"], ["hh"], "tiny")
    torch.testing.assert_close(out(adapters.load(written, base_model())), out(model), rtol=0, atol=1e-6)
    args = [str(run), "--format", "merged", "--out", str(tmp_path / "m"), "--base", str(base_dir), "--also",
            f"{written}:0.5"]
    assert export_main(args) == 0 and (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert export_main([str(run), "--format", "merged", "--out", str(tmp_path / "m2")]) == 2
    assert "pass base=BASE_DIR (--base)" in capsys.readouterr().err


def test_bad_export_requests_are_named(tmp_path, base_dir):
    model = trained()
    with pytest.raises(ValueError, match="merges into a base checkpoint: pass base=BASE_DIR"):
        export_adapter(model, "merged", tmp_path / "m")
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        export_adapter(model, "onnx", tmp_path / "m")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        export_adapter(model, "comfyui", tmp_path / "m", dtype="int8")
    with pytest.raises(AdapterError, match="DoRA adapter carries magnitude vectors the comfyui format cannot hold"):
        export_adapter(trained(use_dora=True), "comfyui", tmp_path / "d.safetensors")
    with pytest.raises(AdapterError, match="DoRA adapters cannot be merged"):
        export_adapter(trained(use_dora=True), "merged", tmp_path / "d", base=base_dir)
    other = save_checkpoint(HappyHorseTransformer(ModelConfig(**{**ModelConfig.preset("tiny").model_dump(),
                                                                 "hidden_size": 32})),
                            tmp_path / "other")  # fmt: skip
    with pytest.raises(AdapterError,
                       match=r"the PEFT model's adapter: block.layers.2.attention.linear_proj has A \[4, 64\] / B "
                             r"\[64, 4\], base .*other needs \[r, 32\] / \[32, r\]"):
        export_adapter(model, "merged", tmp_path / "m", base=other)
    assert not (tmp_path / "m").exists()
