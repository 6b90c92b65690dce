"""Adapters other front-ends load: Wan2GP's bare keys, musubi-tuner's MagiHuman LoRAs, expert-scoped adapters.

The key layouts are pinned to each front-end's published code (cited per test), not
rebuilt from hhtune's own writers.
"""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import base_model, inputs, out, rel, trained
from safetensors.torch import load_file, save_file

from hhtune import adapters
from hhtune.adapters.inject import add_lora, trainable_parameter_count
from hhtune.adapters.settings import LoraSettings, expected_trainable_parameters
from hhtune.export import export_adapter
from hhtune.model import HappyHorseTransformer, ModelConfig, load_checkpoint, save_checkpoint

MM = [0, 1, 6, 7]  # the tiny preset's sandwich layers
BLOCK_LINEARS = ("attention.linear_qkv", "attention.linear_proj", "mlp.up_gate_proj", "mlp.down_proj")
# tiny: 4 query heads of 16, 2 kv heads, one gate per query head -> q 64, k 32, v 32, g 4 (official packing order)
QKVG = (64, 32, 32, 4)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_checkpoint(base_model(), tmp_path_factory.mktemp("base") / "base", max_shard_size=40_000)


def _lora_layer(model, path):
    return model.get_base_model().get_submodule(path)


def _peft_delta(model, path: str, adapter: str = "default") -> torch.Tensor:
    """The stacked delta PEFT applies to one module (expert layers: zero blocks for experts not adapted)."""
    return _lora_layer(model, path).get_delta_weight(adapter).float()


# --------------------------------------------------------------------------- Wan2GP


def _wan2gp_split(lora: dict[str, torch.Tensor], layer: int, linear: str):
    """What Wan2GP hands to mmgp for one module, per deepbeepmeep/Wan2GP models/magi_human/checkpoint_schema.py
    (preprocess_magi_lora_state_dict): in sandwich layers lora_B rows split into video/audio/text experts, linear_qkv
    rows further into linear_q/k/v/g; lora_A and alpha are shared by the pieces. mmgp (offload.py,
    load_loras_into_model) then scales each piece by alpha / lora_A.shape[0], or by 1.0 when alpha is missing."""
    stem = f"block.layers.{layer}.{linear}"
    a, b = lora[f"{stem}.lora_A.weight"].float(), lora[f"{stem}.lora_B.weight"].float()
    scale = float(lora[f"{stem}.alpha"]) / a.shape[0] if f"{stem}.alpha" in lora else 1.0
    experts = ("video", "audio", "text") if layer in MM else ("",)
    pieces, row = {}, 0
    for e in experts:
        names = ("linear_q",
                 "linear_k", "linear_v", "linear_g") if linear.endswith("linear_qkv") else (linear.split(".")[1],)
        sizes = QKVG if linear.endswith("linear_qkv") else (b.shape[0] // len(experts),)
        for name, size in zip(names, sizes):
            pieces[(e, name)] = b[row : row + size] @ a * scale
            row += size
    assert row == b.shape[0]
    return pieces


def test_wan2gp_export_has_the_bare_official_keys_and_the_same_deltas(tmp_path):
    model = trained(layers="all", experts=["video", "audio"], embedders=["audio"])
    lora = load_file(export_adapter(model, "wan2gp", tmp_path / "w.safetensors", dtype="fp32"))
    # Wan2GP's key convention: bare official module paths (no prefix), .lora_A.weight / .lora_B.weight / .alpha
    want = {f"block.layers.{i}.{m}.{s}" for i in range(8) for m in BLOCK_LINEARS
            for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    want |= {"adapter.audio_embedder.lora_A.weight", "adapter.audio_embedder.lora_B.weight",
             "adapter.audio_embedder.alpha"}
    assert set(lora) == want
    assert lora["block.layers.0.attention.linear_qkv.lora_B.weight"].shape == (396, 4)  # 3 experts x 132, stacked
    assert lora["block.layers.2.attention.linear_qkv.lora_B.weight"].shape == (132, 4)
    assert all(float(v) == 4.0 for k, v in lora.items() if k.endswith(".alpha"))  # alpha = rank: scale 1 everywhere
    for i in range(8):
        for linear in BLOCK_LINEARS:
            pieces = _wan2gp_split(lora, i, linear)
            delta = _peft_delta(model, f"block.layers.{i}.{linear}")
            if i in MM:
                per = delta.shape[0] // 3
                for k, e in enumerate(("video", "audio", "text")):
                    got = torch.cat([v for (ex, _), v in pieces.items() if ex == e])
                    torch.testing.assert_close(got, delta[k * per : (k + 1) * per], rtol=1e-5, atol=1e-7)
                assert all(v.abs().max() == 0 for (ex, _), v in pieces.items() if ex == "text")  # text expert untouched
            else:
                torch.testing.assert_close(torch.cat(list(pieces.values())), delta, rtol=1e-5, atol=1e-7)
    emb = _lora_layer(model, "adapter.audio_embedder")
    delta = lora["adapter.audio_embedder.lora_B.weight"] @ lora["adapter.audio_embedder.lora_A.weight"]
    torch.testing.assert_close(delta, emb.get_delta_weight("default").float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out(adapters.load(tmp_path / "w.safetensors", base_model())), out(model), rtol=0,
                               atol=1e-5)


# --------------------------------------------------------------------------- musubi-tuner


def _musubi_file(path, rank=4, alpha=8.0, seed=5):
    """A LoRA as AkaneTendo25/musubi-tuner (branch magi-human) writes it: networks/lora_magihuman.py adapts every linear
    child of the Attention, MLP and Adapter modules (norms and rope excluded); networks/lora.py names them
    "lora_unet_" + path with "." -> "_", with .lora_down.weight [r, in], .lora_up.weight [out, r] and .alpha. In the
    sandwich layers out is the per-expert out_features of NativeMoELinear: one update added to every expert."""
    official = base_model().state_dict()
    g = torch.Generator().manual_seed(seed)
    modules = [f"adapter.{m}_embedder" for m in ("video", "text", "audio")]
    modules += [f"block.layers.{i}.{m}" for i in range(8) for m in BLOCK_LINEARS]
    state, updates = {}, {}
    for m in modules:
        rows, cols = official[m + ".weight"].shape
        out_features = rows // 3 if m.startswith("block.") and int(m.split(".")[2]) in MM else rows
        down, up = torch.randn(rank, cols, generator=g) * 0.1, torch.randn(out_features, rank, generator=g) * 0.1
        key = "lora_unet_" + m.replace(".", "_")
        state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
        updates[m] = alpha / rank * (up @ down)
    save_file(state, path)
    return updates


def _official_with_lora(updates) -> dict[str, torch.Tensor]:
    """The official state dict with W + alpha/r * up @ down merged into a copy, the shared update in every expert."""
    state = {k: v.clone() for k, v in base_model().state_dict().items()}
    for m, d in updates.items():
        w = state[m + ".weight"]
        full = torch.cat([d] * (w.shape[0] // d.shape[0]))
        state[m + ".weight"] = (w.float() + full).to(w.dtype)
    return state


def test_musubi_lora_with_sandwich_and_embedders_gives_the_official_output(tmp_path, base_dir):
    updates = _musubi_file(tmp_path / "musubi.safetensors")
    official = HappyHorseTransformer(ModelConfig.preset("tiny")).eval()
    official.load_state_dict(_official_with_lora(updates))
    want = out(official)
    loaded = adapters.load(tmp_path / "musubi.safetensors", base_model())
    for m, d in updates.items():  # exactly the official update per module: the shared one in every expert
        got = _lora_layer(loaded, m).get_delta_weight(loaded.active_adapters[0]).float()
        torch.testing.assert_close(got, torch.cat([d] * (got.shape[0] // d.shape[0])), rtol=1e-5, atol=1e-7, msg=m)
    # the outputs then differ only by bf16 rounding: unmerged adds the fp32 delta to each bf16 block output, the
    # official merge rounds W + delta to bf16 (measured 0.7%; the adapter itself moves the output by > 5%)
    assert rel(out(loaded), want) < 1.5e-2
    assert rel(out(base_model()), want) > 5e-2
    merged = export_adapter(tmp_path / "musubi.safetensors", "merged", tmp_path / "m", base=base_dir)
    state = {k: v for f in sorted(merged.glob("model-*.safetensors")) for k, v in load_file(f).items()}
    expected = _official_with_lora(updates)
    for k, v in expected.items():  # the same weights up to one rounding of the fp32 sum
        torch.testing.assert_close(state[k].float(), v.float(), rtol=2**-7, atol=1e-6, msg=k)
    # converting it gives the same model in every format
    for fmt in ("wan2gp", "comfyui", "kohya", "peft"):
        conv = export_adapter(tmp_path / "musubi.safetensors", fmt, tmp_path / fmt, base=base_dir, dtype="fp32")
        assert rel(out(adapters.load(conv, base_model())), out(loaded)) < 1e-5, fmt
    kohya = load_file(tmp_path / "kohya" / "adapter_kohya.safetensors")  # a shared update goes back as musubi holds it
    assert kohya["lora_unet_block_layers_0_attention_linear_qkv.lora_up.weight"].shape == (132, 4)
    assert kohya["lora_unet_adapter_audio_embedder.lora_down.weight"].shape == (4, 64)
    cli = tmp_path / "cli.safetensors"
    from hhtune.export.__main__ import main as export_main

    assert export_main([str(tmp_path / "musubi.safetensors"), "--format", "wan2gp", "--out", str(cli), "--base",
                        str(base_dir), "--dtype", "fp32"]) == 0  # fmt: skip
    assert load_file(cli)["block.layers.0.attention.linear_qkv.lora_B.weight"].shape == (396, 4)


# --------------------------------------------------------------------------- modality-scoped adapters


def _batch(audio_len: int):
    v, a, t = inputs()
    return v, a[:, :audio_len], t


def test_training_only_the_audio_experts_leaves_audio_free_video_bit_identical(tmp_path):
    settings = LoraSettings(rank=4, layers=MM, experts=["audio"])
    model = add_lora(base_model(), settings)
    # r * (in + out) per module, one B (audio): layers 0-1 (GELU7) 4 * 964 each, layers 6-7 (SwiGLU7) 4 * 956 each
    assert trainable_parameter_count(model) == expected_trainable_parameters(model.config, settings) == 15_360
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B_audio." in n for n in names)
    from hhtune.adapters.base_identity import base_model_id

    assert base_model_id(model) == base_model_id(base_model())  # the expert wrappers hide no base weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        ov, oa = model(*_batch(5))
        (ov.square().mean() + oa.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_B_audio" in n or "lora_A" in n for n in changed)
    assert any("lora_B_audio" in n for n in changed)
    model.eval()
    with torch.no_grad():
        v_base, _ = base_model()(*_batch(0))
        v_new, a_new = model(*_batch(0))
        assert a_new.shape == (1, 0, 64)
        assert torch.equal(v_new, v_base)  # no audio token: the audio experts never run
        assert not torch.equal(model(*_batch(5))[1], base_model()(*_batch(5))[1])  # with audio, the adapter acts
    model.save_pretrained(str(tmp_path / "run" / "adapter"))  # the trainer's own writer: PEFT's save_pretrained
    reloaded = adapters.load(tmp_path / "run", base_model())
    assert torch.equal(out(reloaded), out(model))
    wan = load_file(export_adapter(tmp_path / "run", "wan2gp", tmp_path / "a.safetensors", dtype="fp32"))
    b = wan["block.layers.6.mlp.down_proj.lora_B.weight"]
    assert b.shape == (192, 4) and b[:64].abs().max() == 0 and b[64:128].abs().max() > 0 and b[128:].abs().max() == 0


def test_modality_strengths_move_the_expert_outputs_independently(tmp_path):
    model = trained(layers=MM, experts=["video", "audio"])
    peft_dir = export_adapter(model, "peft", tmp_path / "p", dtype="fp32")
    layer_path = "block.layers.0.mlp.up_gate_proj"
    x = torch.randn(1, 8 + 5 + 3, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    from hhtune.model.transformer import Segments

    seg = Segments(8, 5, 3)

    def rows(modalities):
        m = adapters.load(peft_dir, base_model(), modalities=modalities)
        with torch.no_grad():
            return seg.split(_lora_layer(m, layer_path)(x, seg).float())

    full, no_audio, no_video = rows({}), rows({"audio": 0.0}), rows({"video": 0.0})
    # audio strength: audio rows only
    assert torch.equal(full[0], no_audio[0]) and not torch.equal(full[1], no_audio[1])
    # video strength: video rows only
    assert torch.equal(full[1], no_video[1]) and not torch.equal(full[0], no_video[0])
    assert torch.equal(full[2], no_audio[2])  # text expert never adapted
    # whole model: on an audio-free batch the audio strength changes nothing, the video strength does
    with torch.no_grad():
        v_full = adapters.load(peft_dir, base_model())(*_batch(0))[0]
        assert torch.equal(adapters.load(peft_dir, base_model(), modalities={"audio": 0.0})(*_batch(0))[0], v_full)
        assert not torch.equal(adapters.load(peft_dir, base_model(), modalities={"video": 0.5})(*_batch(0))[0], v_full)
    # dropping the audio part on export = loading at audio strength 0
    dropped = export_adapter(peft_dir, "wan2gp", tmp_path / "d.safetensors", dtype="fp32", drop=["audio"])
    b = load_file(dropped)[f"{layer_path}.lora_B.weight"]
    assert b[336:672].abs().max() == 0 and b[:336].abs().max() > 0  # video, audio, text blocks of 336 rows
    zero_audio = adapters.load(peft_dir, base_model(), modalities={"audio": 0.0})
    assert rel(out(adapters.load(dropped, base_model())), out(zero_audio)) < 1e-6
    assert rel(out(zero_audio), out(adapters.load(peft_dir, base_model()))) > 1e-3


def test_expert_adapters_merge_into_the_stacked_weight(tmp_path, base_dir):
    model = trained(layers="all", experts=["audio"], embedders=["video"])
    merged = export_adapter(model, "merged", tmp_path / "m", base=base_dir)
    state = {k: v for f in sorted(merged.glob("model-*.safetensors")) for k, v in load_file(f).items()}
    base = base_model().state_dict()
    k = "block.layers.7.attention.linear_proj.weight"
    torch.testing.assert_close(state[k].float(),
                               (base[k].float() + _peft_delta(model, k[:-7])).to(torch.bfloat16).float())
    assert torch.equal(state[k][:64], base[k][:64]) and not torch.equal(state[k][64:128], base[k][64:128])
    assert rel(out(load_checkpoint(merged).eval()), out(model)) < 1e-2  # bf16 rounding of W + delta
    assert peft_merge_matches(model)


def peft_merge_matches(model) -> bool:
    """PEFT's own merge_and_unload goes through the expert layer's merge and gives the same model."""
    want = out(model)
    return rel(out(model.merge_and_unload()), want) < 1e-2
