"""Applying adapter files to a model: stacking at strengths, continued training, PEFT's own folders, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from adapter_helpers import base_model, inputs, out, rel, trained
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hhtune import adapters
from hhtune.adapters import AdapterError, apply
from hhtune.export import export_adapter
from hhtune.model import save_checkpoint


def _delta(model) -> torch.Tensor:
    return out(model) - out(base_model())


def _layer_delta(model, x: torch.Tensor) -> torch.Tensor:
    """What the adapters add to block 3's down_proj for input ``x``."""
    layer = model.get_base_model().block.layers[3].mlp.down_proj
    with torch.no_grad():
        return layer(x.to(torch.bfloat16)).float() - layer.base_layer(x.to(torch.bfloat16)).float()


def _lora_delta(model, x: torch.Tensor) -> torch.Tensor:
    """alpha / r * x A^T B^T of block 3's down_proj of a trained PEFT model (alpha = 2r)."""
    w = model.get_base_model().block.layers[3].mlp.down_proj
    return 2.0 * (x @ w.lora_A["default"].weight.T @ w.lora_B["default"].weight.T).detach()


def test_strength_scales_the_delta_and_stacked_adapters_add(tmp_path):
    a, b = trained(seed=0, rank=2), trained(seed=1, rank=2)
    pa = export_adapter(a, "comfyui", tmp_path / "a.safetensors", dtype="fp32")
    pb = export_adapter(b, "peft", tmp_path / "b", dtype="fp32")
    assert rel(out(adapters.load(pa, base_model(), strength=0.0)), out(base_model())) == 0
    x = torch.randn(5, 168, generator=torch.Generator().manual_seed(3))
    half = adapters.load(pa, base_model(), strength=0.5)
    torch.testing.assert_close(_layer_delta(half, x), 0.5 * _lora_delta(a, x), rtol=0.02, atol=0.02)
    stacked = adapters.load(pb, adapters.load(pa, base_model(), strength=1.0), strength=-0.5)
    assert stacked.active_adapters == ["adapter_a", "adapter_b"]
    want = _lora_delta(a, x) - 0.5 * _lora_delta(b, x)
    torch.testing.assert_close(_layer_delta(stacked, x), want, rtol=0.02, atol=0.02)
    assert rel(out(stacked), out(adapters.load(pa, base_model()))) > 0.02  # the second adapter changes the output


def test_loaded_adapter_trains_further_with_its_own_rank_and_alpha(tmp_path):
    path = export_adapter(trained(rank=4), "kohya", tmp_path / "k.safetensors", dtype="fp32")
    model = adapters.load(path, base_model(), trainable=True)
    layer = model.get_base_model().block.layers[2].attention.linear_qkv
    assert layer.r["adapter_k"] == 4 and layer.scaling["adapter_k"] == 2.0  # alpha / r kept, not folded into B
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n and "adapter_k" in n for n in names)
    frozen = adapters.load(path, base_model())
    assert not any(p.requires_grad for p in frozen.parameters())
    stacked = adapters.load(path, model, adapter_name="style")  # a frozen style adapter under the trainable one
    assert {n.split(".")[-2] for n, p in stacked.named_parameters() if p.requires_grad} == {"adapter_k"}
    opt = torch.optim.SGD([p for p in stacked.parameters() if p.requires_grad], lr=0.1)
    before = layer.lora_B["style"].weight.clone()
    out_v, out_a = stacked(*inputs())
    (out_v.square().mean() + out_a.square().mean()).backward()
    opt.step()
    assert torch.equal(layer.lora_B["style"].weight, before)
    assert layer.lora_B["adapter_k"].weight.grad is not None


def test_peft_saved_folders_load_including_dora_and_run_dirs(tmp_path):
    for kw in ({"use_dora": True}, {"use_rslora": True}):
        model = trained(**kw)
        model.save_pretrained(str(tmp_path / "run" / "adapter"))  # PEFT's own writer, as training does
        torch.testing.assert_close(out(adapters.load(tmp_path / "run", base_model())), out(model), rtol=0, atol=1e-6)


def _write_with_meta(src, dst, **changes):
    with safe_open(src, "pt") as f:
        meta = json.loads(f.metadata()["hhtune"])
    save_file(load_file(src), dst, {"hhtune": json.dumps({**meta, **changes})})
    return dst


def test_bad_files_are_named(tmp_path):
    good = export_adapter(trained(), "comfyui", tmp_path / "a.safetensors")
    sr = _write_with_meta(good, tmp_path / "sr.safetensors", base_name="MagiHuman-SR-1080p")
    with pytest.raises(AdapterError,
                       match=r"sr.safetensors was trained on another base model \('MagiHuman-SR-1080p', "
                             r".*super-resolution"):
        adapters.load(sr, base_model(seed=1))
    assert adapters.load(sr, base_model(seed=1), check_base=False)  # the escape hatch for an FP8 copy of the same base
    state = load_file(good)
    state["diffusion_model.block.layers.2.attention.linear_qkv.lora_A.weight"] = torch.zeros(4, 65)
    save_file(state, tmp_path / "shape.safetensors")
    with pytest.raises(AdapterError,
                       match=r"shape.safetensors: block.layers.2.attention.linear_qkv has A \[4, 65\] / B \[132, 4\], "
                             r"the model needs \[r, 64\]"):
        adapters.load(tmp_path / "shape.safetensors", base_model())
    with pytest.raises(AdapterError, match=r"metadata says rank 16 but block.layers.2.* has rank 4"):
        adapters.load(_write_with_meta(good, tmp_path / "rank.safetensors", rank=16), base_model())
    peft = export_adapter(good, "peft", tmp_path / "peft")
    cfg = json.loads((peft / "adapter_config.json").read_text())
    (peft / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(AdapterError, match=r"adapter_config.json says rank 8 for block.layers.2.* has rank 4"):
        adapters.load(peft, base_model())
    (peft / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "LOHA"}))
    with pytest.raises(AdapterError, match="is a LOHA adapter; only LoRA"):
        adapters.load(peft, base_model())
    base_dir = save_checkpoint(base_model(), tmp_path / "base", max_shard_size=40_000)
    with pytest.raises(AdapterError, match=r"is not a LoRA adapter.*load_checkpoint"):
        adapters.load(min(base_dir.glob("model-*.safetensors")), base_model())
    with pytest.raises(AdapterError, match=r"is not an adapter: no adapter_config.json.*it is a base checkpoint"):
        adapters.load(base_dir, base_model())
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterError, match=r"junk.safetensors is not a safetensors file"):
        adapters.load(tmp_path / "junk.safetensors", base_model())
    save_file({"diffusion_model.block.layers.0.attention.linear_qkv.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.block.layers.0.attention.linear_qkv.lora_B.weight": torch.zeros(200, 2)},
              tmp_path / "mm.safetensors")  # fmt: skip
    with pytest.raises(AdapterError,
                       match=r"block.layers.0.attention.linear_qkv has B \[200, 2\], the weight in the model has 396 "
                             r"rows \(3 experts of 132\)"):
        adapters.load(tmp_path / "mm.safetensors", base_model())
    save_file({"diffusion_model.block.layers.9.mlp.down_proj.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.block.layers.9.mlp.down_proj.lora_B.weight": torch.zeros(64, 2),
               "diffusion_model.block.layers.2.mlp.down_proj.lora_A.weight": torch.zeros(2, 168),
               "diffusion_model.block.layers.2.mlp.down_proj.lora_B.weight": torch.zeros(64, 2)},
              tmp_path / "deep.safetensors")  # fmt: skip
    with pytest.raises(AdapterError,
                       match=r"deep.safetensors: module 'block.layers.9.mlp.down_proj' does not exist in the model"):
        adapters.load(tmp_path / "deep.safetensors", base_model())
    save_file({"lora_unet_final_linear_video.lora_down.weight": torch.zeros(2, 64),
               "lora_unet_final_linear_video.lora_up.weight": torch.zeros(192, 2)},
              tmp_path / "k.safetensors")  # fmt: skip
    with pytest.raises(AdapterError,
                       match=r"k.safetensors: kohya key lora_unet_final_linear_video.lora_down.weight does not name a "
                             r"HappyHorse block or embedder"):
        adapters.load(tmp_path / "k.safetensors", base_model())
    with pytest.raises(AdapterError, match="adapter not found"):
        adapters.load(tmp_path / "nothing.safetensors", base_model())


def test_adapter_specs_on_the_command_line():
    from hhtune.adapters import parse_spec

    assert parse_spec("runs/brand/adapter:0.8") == ("runs/brand/adapter", 0.8, {})
    assert parse_spec("runs/brand/adapter") == ("runs/brand/adapter", 1.0, {})
    assert parse_spec("lora.safetensors:-1.5") == ("lora.safetensors", -1.5, {})
    assert parse_spec("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0, {})
    assert parse_spec("a.safetensors:video=1.0,audio=0.5") == ("a.safetensors", 1.0, {"video": 1.0, "audio": 0.5})
    assert parse_spec("a.safetensors:0.8,audio=0") == ("a.safetensors", 0.8, {"audio": 0.0})
    with pytest.raises(ValueError, match="unknown modality 'speech'"):
        parse_spec("a.safetensors:speech=1")


def test_sample_command_applies_per_modality_strengths(tmp_path, monkeypatch):
    """``hhtune.sample --adapter PATH:video=1.0,audio=0.5`` loads the real file with those strengths."""
    from hhtune.encoders import build_tiny_encoders
    from hhtune.sample import main as sample_main

    build_tiny_encoders(tmp_path / "enc")  # prompts are encoded (and the encoder freed) before the adapter loads
    path = export_adapter(trained(layers="all", experts=["video", "audio"]), "wan2gp", tmp_path / "a.safetensors")
    loaded = []
    real = adapters.load

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        raise SystemExit(0)  # stop before sampling (the CLI wrapper lets exits through): encoders are not tested here

    monkeypatch.setattr(adapters, "load", spy)
    with pytest.raises(SystemExit):
        sample_main(["--model", "tiny", "--random-weights", "--encoders", str(tmp_path / "enc"), "--prompt", "x",
                     "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--adapter", f"{path}:video=1.0,audio=0.5"])  # fmt: skip
    layer = loaded[0].get_base_model().block.layers[0].attention.linear_qkv
    assert layer.expert_strength["adapter_a"] == {"video": 1.0, "audio": 0.5}


# --------------------------------------------------------------------------- bad input


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


@pytest.mark.parametrize("case",
                         ["architecture", "wan_keys", "shape", "unknown_module", "unknown_key", "duplicate", "nan"])
def test_bad_files_name_file_key_and_reason_and_change_nothing(tmp_path, case):
    good = load_file(export_adapter(trained(), "wan2gp", tmp_path / "good.safetensors", dtype="fp32"))
    k = "block.layers.2.mlp.down_proj"
    state, header, match = dict(good), {}, None
    if case == "architecture":
        header = {"modelspec.architecture": "wan2.1-t2v-14b/lora"}
        match = r"bad.safetensors: modelspec.architecture is 'wan2.1-t2v-14b/lora': a LoRA for another model"
    elif case == "wan_keys":  # a Wan2.1 LoRA in ComfyUI's generic layout: no header, only foreign module paths
        state = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 64),
                 "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(64, 4)}  # fmt: skip
        match = (r"bad.safetensors: none of its 1 modules exist in the model \(e.g. 'blocks.0.self_attn.q'\)"
                 r".*another architecture")
    elif case == "shape":
        state[f"{k}.lora_A.weight"] = torch.zeros(4, 100)
        match = (r"bad.safetensors: block.layers.2.mlp.down_proj has A \[4, 100\] / B \[64, 4\], "
                 r"the model needs \[r, 168\]")
    elif case == "unknown_module":
        state["block.layers.2.attention.linear_gate.lora_A.weight"] = torch.zeros(4, 64)
        state["block.layers.2.attention.linear_gate.lora_B.weight"] = torch.zeros(64, 4)
        match = r"bad.safetensors: module 'block.layers.2.attention.linear_gate' does not exist in the model"
    elif case == "unknown_key":
        state["blocks.0.self_attn.q.lora_A.weight"] = torch.zeros(4, 64)
        match = r"bad.safetensors: key blocks.0.self_attn.q.lora_A.weight names no HappyHorse module"
    elif case == "duplicate":
        state[f"lora_unet_{k.replace('.', '_')}.lora_down.weight"] = state[f"{k}.lora_A.weight"].clone()
        state[f"lora_unet_{k.replace('.', '_')}.lora_up.weight"] = state[f"{k}.lora_B.weight"].clone()
        match = r"bad.safetensors: module block.layers.2.mlp.down_proj appears twice.*two key styles"
    elif case == "nan":
        state[f"{k}.lora_B.weight"] = state[f"{k}.lora_B.weight"].clone()
        state[f"{k}.lora_B.weight"][3, 1] = float("nan")
        match = r"bad.safetensors: tensor block.layers.2.mlp.down_proj.lora_B.weight holds NaN"
    save_file(state, tmp_path / "bad.safetensors", header)
    for model in (base_model(), adapters.load(tmp_path / "good.safetensors", base_model())):  # plain, and stacked on
        before, types = _snapshot(model)
        with pytest.raises(AdapterError, match=match):
            adapters.load(tmp_path / "bad.safetensors", model)
        after, types_after = _snapshot(model)
        assert types_after == types and before.keys() == after.keys()
        assert all(torch.equal(before[n], after[n]) for n in before)  # nothing half-applied
    with pytest.raises(AdapterError, match=match.replace("the model", "base .*")):
        export_adapter(tmp_path / "bad.safetensors", "merged", tmp_path / "m",
                       base=save_checkpoint(base_model(), tmp_path / "b"))


def test_a_failure_while_injecting_removes_the_half_made_adapter(tmp_path, monkeypatch):
    path = export_adapter(trained(layers="all"), "wan2gp", tmp_path / "w.safetensors", dtype="fp32")
    first = adapters.load(export_adapter(trained(seed=1), "comfyui", tmp_path / "c.safetensors"), base_model())

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(apply, "set_peft_model_state_dict", broken)
    for model in (base_model(), first):
        before, types = _snapshot(model)
        want = out(model)
        with pytest.raises(RuntimeError, match="out of memory"):
            adapters.load(path, model)
        after, types_after = _snapshot(model)
        assert types_after == types and before.keys() == after.keys() and torch.equal(out(model), want)
