"""Adapter import: stacking at strengths, continued training, PEFT's own folders, fingerprints, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from export.adapter_helpers import base_model, inputs, out, rel, trained
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hhtune import adapters
from hhtune.export import AdapterError, export_adapter
from hhtune.fingerprint import base_fingerprint
from hhtune.model import load_checkpoint, save_checkpoint


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


def test_fingerprint_is_the_same_in_memory_and_on_disk(tmp_path):
    model = base_model()
    fp = base_fingerprint(model)
    saved = save_checkpoint(model, tmp_path / "ckpt", max_shard_size=40_000)
    assert base_fingerprint(saved) == fp
    assert base_fingerprint(trained()) == fp  # the base under a PEFT wrapper
    assert base_fingerprint(load_checkpoint(saved, dtype=torch.float32)) == fp  # another storage dtype
    assert base_fingerprint(base_model(seed=1)) != fp  # same shapes, other weights (an SR or distilled model)
    fp8 = export_adapter(trained(), "merged_fp8", tmp_path / "fp8.safetensors", base=saved, strength=0.0)
    assert base_fingerprint(fp8) != fp  # FP8 rounding changes the values
    assert base_fingerprint(load_checkpoint(fp8, fp8_storage=True)) == base_fingerprint(fp8) == base_fingerprint(load_checkpoint(fp8))


def test_fingerprint_reads_only_sampled_rows(tmp_path, monkeypatch):
    from safetensors import safe_open as real_open

    saved = save_checkpoint(base_model(), tmp_path / "ckpt")
    full_reads = []

    class Spy:
        def __init__(self, *a, **k):
            self._f = real_open(*a, **k)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def get_tensor(self, key):
            full_reads.append(key)
            return self._f.get_tensor(key)

    monkeypatch.setattr("safetensors.safe_open", Spy)
    assert base_fingerprint(saved) == base_fingerprint(base_model())
    assert full_reads == []  # weights are read through row slices only


def _write_with_meta(src, dst, **changes):
    with safe_open(src, "pt") as f:
        meta = json.loads(f.metadata()["hhtune"])
    save_file(load_file(src), dst, {"hhtune": json.dumps({**meta, **changes})})
    return dst


def test_bad_files_are_named(tmp_path):
    good = export_adapter(trained(), "comfyui", tmp_path / "a.safetensors")
    sr = _write_with_meta(good, tmp_path / "sr.safetensors", base_name="MagiHuman-SR-1080p")
    with pytest.raises(AdapterError, match=r"sr.safetensors was trained on another base model \('MagiHuman-SR-1080p', .*super-resolution"):
        adapters.load(sr, base_model(seed=1))
    assert adapters.load(sr, base_model(seed=1), check_base=False)  # the escape hatch for an FP8 copy of the same base
    state = load_file(good)
    state["diffusion_model.block.layers.2.attention.linear_qkv.lora_A.weight"] = torch.zeros(4, 65)
    save_file(state, tmp_path / "shape.safetensors")
    with pytest.raises(AdapterError, match=r"shape.safetensors: block.layers.2.attention.linear_qkv has A \[4, 65\] / B \[132, 4\], the model needs \[r, 64\]"):
        adapters.load(tmp_path / "shape.safetensors", base_model())
    with pytest.raises(AdapterError, match="metadata says rank 16 but block.layers.2.* has rank 4"):
        adapters.load(_write_with_meta(good, tmp_path / "rank.safetensors", rank=16), base_model())
    peft = export_adapter(good, "peft", tmp_path / "peft")
    cfg = json.loads((peft / "adapter_config.json").read_text())
    (peft / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(AdapterError, match="adapter_config.json says rank 8 for block.layers.2.* has rank 4"):
        adapters.load(peft, base_model())
    (peft / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "LOHA"}))
    with pytest.raises(AdapterError, match="is a LOHA adapter; only LoRA"):
        adapters.load(peft, base_model())
    base_dir = save_checkpoint(base_model(), tmp_path / "base", max_shard_size=40_000)
    with pytest.raises(AdapterError, match="is not a LoRA adapter.*load_checkpoint"):
        adapters.load(min(base_dir.glob("model-*.safetensors")), base_model())
    with pytest.raises(AdapterError, match="is not an adapter: no adapter_config.json.*it is a base checkpoint"):
        adapters.load(base_dir, base_model())
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterError, match="junk.safetensors is not a safetensors file"):
        adapters.load(tmp_path / "junk.safetensors", base_model())
    save_file({"diffusion_model.block.layers.0.attention.linear_qkv.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.block.layers.0.attention.linear_qkv.lora_B.weight": torch.zeros(200, 2)},
              tmp_path / "mm.safetensors")  # fmt: skip
    with pytest.raises(AdapterError, match=r"block.layers.0.attention.linear_qkv has B \[200, 2\], the weight in the model has 396 rows \(3 experts of 132\)"):
        adapters.load(tmp_path / "mm.safetensors", base_model())
    save_file({"diffusion_model.block.layers.9.mlp.down_proj.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.block.layers.9.mlp.down_proj.lora_B.weight": torch.zeros(64, 2),
               "diffusion_model.block.layers.2.mlp.down_proj.lora_A.weight": torch.zeros(2, 168),
               "diffusion_model.block.layers.2.mlp.down_proj.lora_B.weight": torch.zeros(64, 2)},
              tmp_path / "deep.safetensors")  # fmt: skip
    with pytest.raises(AdapterError, match="deep.safetensors: module 'block.layers.9.mlp.down_proj' does not exist in the model"):
        adapters.load(tmp_path / "deep.safetensors", base_model())
    save_file({"lora_unet_final_linear_video.lora_down.weight": torch.zeros(2, 64),
               "lora_unet_final_linear_video.lora_up.weight": torch.zeros(192, 2)}, tmp_path / "k.safetensors")  # fmt: skip
    with pytest.raises(AdapterError, match="k.safetensors: kohya key lora_unet_final_linear_video.lora_down.weight does not name a HappyHorse block or embedder"):
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
    from hhtune.sample import main as sample_main

    path = export_adapter(trained(layers="all", experts=["video", "audio"]), "wan2gp", tmp_path / "a.safetensors")
    loaded = []
    real = adapters.load

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        raise SystemExit(0)  # stop before sampling (the CLI wrapper lets exits through): encoders are not tested here

    monkeypatch.setattr(adapters, "load", spy)
    with pytest.raises(SystemExit):
        sample_main(["--model", "tiny", "--random-weights", "--encoders", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--adapter", f"{path}:video=1.0,audio=0.5"])  # fmt: skip
    layer = loaded[0].get_base_model().block.layers[0].attention.linear_qkv
    assert layer.expert_strength["adapter_a"] == {"video": 1.0, "audio": 0.5}
