"""Adapters other front-ends load: Wan2GP's bare keys, musubi-tuner's MagiHuman LoRAs, expert-scoped adapters.

The key layouts are pinned to each front-end's published code (cited per test), not
rebuilt from hhtune's own writers.
"""

from __future__ import annotations

import json

import pytest
import torch
from adapter_helpers import base_model, inputs, out, rel, trained
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hhtune import adapters
from hhtune.export import AdapterError, export_adapter
from hhtune.lora import LoraSettings, add_lora, expected_trainable_parameters, trainable_parameter_count
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
    rows further into linear_q/k/v/g; lora_A and alpha are shared by the pieces. mmgp (offload.py, load_loras_into_model)
    then scales each piece by alpha / lora_A.shape[0], or by 1.0 when alpha is missing."""
    stem = f"block.layers.{layer}.{linear}"
    a, b = lora[f"{stem}.lora_A.weight"].float(), lora[f"{stem}.lora_B.weight"].float()
    scale = float(lora[f"{stem}.alpha"]) / a.shape[0] if f"{stem}.alpha" in lora else 1.0
    experts = ("video", "audio", "text") if layer in MM else ("",)
    pieces, row = {}, 0
    for e in experts:
        names = ("linear_q", "linear_k", "linear_v", "linear_g") if linear.endswith("linear_qkv") else (linear.split(".")[1],)
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
    want = {f"block.layers.{i}.{m}.{s}" for i in range(8) for m in BLOCK_LINEARS for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    want |= {"adapter.audio_embedder.lora_A.weight", "adapter.audio_embedder.lora_B.weight", "adapter.audio_embedder.alpha"}
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
    torch.testing.assert_close(lora["adapter.audio_embedder.lora_B.weight"] @ lora["adapter.audio_embedder.lora_A.weight"],
                               emb.get_delta_weight("default").float(), rtol=1e-5, atol=1e-7)  # fmt: skip
    torch.testing.assert_close(out(adapters.load(tmp_path / "w.safetensors", base_model())), out(model), rtol=0, atol=1e-5)


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
    from hhtune.fingerprint import base_fingerprint

    assert base_fingerprint(model) == base_fingerprint(base_model())  # the expert wrappers hide no base weight
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
    assert torch.equal(full[0], no_audio[0]) and not torch.equal(full[1], no_audio[1])  # audio strength: audio rows only
    assert torch.equal(full[1], no_video[1]) and not torch.equal(full[0], no_video[0])  # video strength: video rows only
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
    torch.testing.assert_close(state[k].float(), (base[k].float() + _peft_delta(model, k[:-7])).to(torch.bfloat16).float())
    assert torch.equal(state[k][:64], base[k][:64]) and not torch.equal(state[k][64:128], base[k][64:128])
    assert rel(out(load_checkpoint(merged).eval()), out(model)) < 1e-2  # bf16 rounding of W + delta
    assert PeftMergeMatches(model)


def PeftMergeMatches(model) -> bool:
    """PEFT's own merge_and_unload goes through the expert layer's merge and gives the same model."""
    want = out(model)
    return rel(out(model.merge_and_unload()), want) < 1e-2


# --------------------------------------------------------------------------- metadata


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


def test_model_card_replaces_the_peft_template(tmp_path):
    from hhtune.export import write_model_card

    model = trained()
    model.save_pretrained(str(tmp_path / "adapter"))
    assert "[More Information Needed]" in (tmp_path / "adapter" / "README.md").read_text()
    info = {"steps": 40, "base": "ckpt/base", "base_fingerprint": "f" * 32, "trigger_words": ["hhbrand"],
            "languages": ["en", "zh"], "recipe_hash": "abc", "consent": "signed releases on file",
            "dataset_summary": {"clips": 9, "hours": 0.25, "dataset": "data/brand"},
            "validation": {"stills": ["validation/step_40.png"], "metrics": {"sample_distance": 0.31}}}  # fmt: skip
    card = write_model_card(tmp_path / "adapter", info).read_text()
    assert "[More Information Needed]" not in card
    for text in ("ckpt/base", "f" * 32, "`hhbrand`", "en, zh", "clips: 9", "hours: 0.25", "recipe hash: `abc`",
                 "validation/step_40.png", "sample_distance: 0.31", "signed releases on file"):  # fmt: skip
        assert text in card, text
    assert "NOT RECORDED" in write_model_card(tmp_path / "adapter", {}).read_text()  # no consent field: say so
    (tmp_path / "samples" / "step-00000040").mkdir(parents=True)  # a run folder: stills and val/ metrics found there
    (tmp_path / "samples" / "step-00000040" / "prompt0.png").write_bytes(b"")
    (tmp_path / "metrics.jsonl").write_text('{"step": 40, "loss": 0.5}\n{"step": 40, "val/lip_sync": 0.8}\n')
    card = write_model_card(tmp_path / "adapter", {"steps": 40}).read_text()
    assert "../samples/step-00000040/prompt0.png" in card and "lip_sync: 0.8" in card


# --------------------------------------------------------------------------- bad input


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


@pytest.mark.parametrize("case", ["architecture", "wan_keys", "shape", "unknown_module", "unknown_key", "duplicate", "nan"])
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
        match = r"bad.safetensors: none of its 1 modules exist in the model \(e.g. 'blocks.0.self_attn.q'\).*another architecture"
    elif case == "shape":
        state[f"{k}.lora_A.weight"] = torch.zeros(4, 100)
        match = r"bad.safetensors: block.layers.2.mlp.down_proj has A \[4, 100\] / B \[64, 4\], the model needs \[r, 168\]"
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
        export_adapter(tmp_path / "bad.safetensors", "merged", tmp_path / "m", base=save_checkpoint(base_model(), tmp_path / "b"))


def test_a_failure_while_injecting_removes_the_half_made_adapter(tmp_path, monkeypatch):
    path = export_adapter(trained(layers="all"), "wan2gp", tmp_path / "w.safetensors", dtype="fp32")
    first = adapters.load(export_adapter(trained(seed=1), "comfyui", tmp_path / "c.safetensors"), base_model())

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(adapters, "set_peft_model_state_dict", broken)
    for model in (base_model(), first):
        before, types = _snapshot(model)
        want = out(model)
        with pytest.raises(RuntimeError, match="out of memory"):
            adapters.load(path, model)
        after, types_after = _snapshot(model)
        assert types_after == types and before.keys() == after.keys() and torch.equal(out(model), want)
