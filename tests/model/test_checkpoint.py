"""Checkpoint I/O in the official layout: round trips, FP8, and every bad-checkpoint message."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

from hhtune.model import CheckpointError, HappyHorseTransformer, ModelConfig, load_checkpoint, save_checkpoint
from hhtune.model.checkpoint import FP8_SCALE_SUFFIX, INDEX_NAME
from hhtune.model.placement import host_resident_keys
from hhtune.plan import GB, MemorySettings, plan_settings
from hhtune.recipe import validate_recipe


@pytest.fixture()
def official_single(tmp_path, official_tiny_weights):
    path = tmp_path / "official"
    path.mkdir()
    save_file(official_tiny_weights, path / "model.safetensors")
    return path


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_load_official_single_file_infers_config(official_single, tiny_model):
    model = load_checkpoint(official_single)
    assert model.config == ModelConfig.preset("tiny")
    assert _same(model, tiny_model)


def test_sharded_round_trip_is_bit_exact(tmp_path, tiny_model):
    out = save_checkpoint(tiny_model, tmp_path / "ckpt", max_shard_size=40_000)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((out / s).is_file() for s in shards)
    assert set(index["weight_map"]) == set(tiny_model.state_dict())
    assert _same(load_checkpoint(out), tiny_model)
    # a second save with fewer shards removes the stale ones
    save_checkpoint(tiny_model, out)
    assert sorted(p.name for p in out.glob("model*.safetensors")) == ["model.safetensors"]
    assert not (out / INDEX_NAME).exists()
    assert _same(load_checkpoint(out), tiny_model)


def test_saved_checkpoint_loads_like_the_official_loader(tmp_path, tiny_model):
    """The official loader reads the index, load_file()s every shard and load_state_dict()s the union."""
    out = save_checkpoint(tiny_model, tmp_path / "ckpt", max_shard_size=40_000)
    weight_map = json.loads((out / INDEX_NAME).read_text())["weight_map"]
    state = {}
    for shard in set(weight_map.values()):
        state.update(load_file(out / shard))
    fresh = HappyHorseTransformer(ModelConfig.preset("tiny"))
    result = fresh.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert _same(fresh, tiny_model)


def test_meta_construction_then_streaming_load_leaves_nothing_on_meta(official_single):
    model = load_checkpoint(official_single)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _fp8_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in weights.items():
        if v.dtype == torch.bfloat16:
            scale = v.float().abs().max() / 448.0
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[k + FP8_SCALE_SUFFIX] = scale.reshape(())
        else:
            out[k] = v
    return out


def test_fp8_checkpoint_dequantises_or_keeps_fp8(tmp_path, official_tiny_weights, official_tiny):
    path = tmp_path / "fp8"
    path.mkdir()
    save_file(_fp8_state(official_tiny_weights), path / "model.safetensors")
    deq = load_checkpoint(path)
    kept = load_checkpoint(path, fp8_storage=True)
    w = "block.layers.2.attention.linear_qkv.weight"
    assert deq.state_dict()[w].dtype == torch.bfloat16
    assert kept.state_dict()[w].dtype == torch.float8_e4m3fn
    # FP8 quantisation costs accuracy against the bf16 weights, but far less than a wrong model
    ref = torch.nn.Module.state_dict(deq)[w].float()
    orig = official_tiny_weights[w].float()
    assert float((ref - orig).norm() / orig.norm()) < 0.05
    args = (official_tiny["packed.x"], official_tiny["packed.coords"], official_tiny["packed.modality"])
    with torch.no_grad():
        a, b = deq.forward_packed(*args), kept.forward_packed(*args)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # on-the-fly dequant == dequant on load
    # and an FP8-stored model saves back in the community layout
    out = save_checkpoint(kept, tmp_path / "fp8_again")
    again = load_file(out / "model.safetensors")
    assert again[w].dtype == torch.float8_e4m3fn and (w + FP8_SCALE_SUFFIX) in again


def test_fp8_weight_without_scale_is_named(tmp_path, official_tiny_weights):
    state = _fp8_state(official_tiny_weights)
    del state["block.layers.3.mlp.down_proj.weight" + FP8_SCALE_SUFFIX]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"block.layers.3.mlp.down_proj.weight.*has no.*__fp8_scale"):
        load_checkpoint(tmp_path)


def test_missing_and_unexpected_keys_are_named(tmp_path, official_tiny_weights):
    state = dict(official_tiny_weights)
    del state["final_norm_audio.weight"]
    state["block.layers.2.attention.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path, config=ModelConfig.preset("tiny"))
    assert "missing 1 keys: final_norm_audio.weight" in str(e.value)
    assert "unexpected 1 keys: block.layers.2.attention.extra.weight" in str(e.value)


def test_wrong_preset_names_the_checkpoint_preset(official_single):
    with pytest.raises(CheckpointError, match=r"wrong shapes.*\n.*likely cause: the checkpoint is the 'tiny' preset"):
        load_checkpoint(official_single, config=ModelConfig.preset("mid"))


def test_variant_with_other_layer_settings_is_explained(tmp_path):
    variant = ModelConfig(**{**ModelConfig.preset("tiny").model_dump(), "gelu7_layers": [0]})
    path = save_checkpoint(HappyHorseTransformer(variant), tmp_path / "variant")
    with pytest.raises(CheckpointError, match=r"likely cause: the architectures differ.*'gelu7_layers': \[0\]"):
        load_checkpoint(path, config=ModelConfig.preset("tiny"))
    assert load_checkpoint(path).config == variant  # hhtune_config.json beside the weights


def test_lora_file_passed_as_base_is_recognised(tmp_path):
    save_file(
        {"diffusion_model.block.layers.4.attention.linear_qkv.lora_A.weight": torch.zeros(4, 64),
         "diffusion_model.block.layers.4.attention.linear_qkv.lora_B.weight": torch.zeros(132, 4)},
        tmp_path / "adapter.safetensors",
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"this is a LoRA adapter.*hhtune.adapters.load"):
        load_checkpoint(tmp_path / "adapter.safetensors")


def test_missing_folder_truncated_file_and_missing_shard(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"neither model.safetensors.index.json nor model.safetensors"):
        load_checkpoint(tmp_path / "empty")
    out = save_checkpoint(tiny_model, tmp_path / "ckpt", max_shard_size=40_000)
    shard = sorted(out.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(out)
    shard.unlink()
    with pytest.raises(CheckpointError, match="names shards that are not in"):
        load_checkpoint(out)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"not a .safetensors file"):
        load_checkpoint(tmp_path / "w.bin")


class _DeviceBytes(TorchDispatchMode):
    """Bytes of every tensor copied onto the meta device (the stand-in for the GPU), and the largest."""

    def __init__(self) -> None:
        super().__init__()
        self.total, self.largest = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default) and out.is_meta:
            self.total += out.nbytes
            self.largest = max(self.largest, out.nbytes)
        return out


@pytest.mark.parametrize("fp8", [False, True])
def test_swapped_layers_load_into_host_memory_and_the_device_holds_what_the_plan_says(tmp_path, official_tiny_weights,
                                                                                      fp8):
    swapped = 5
    (tmp_path / "ckpt").mkdir()
    save_file(_fp8_state(official_tiny_weights) if fp8 else official_tiny_weights,
              tmp_path / "ckpt" / "model.safetensors")
    counter = _DeviceBytes()
    with counter:
        model = load_checkpoint(tmp_path / "ckpt", device="meta", fp8_storage=fp8, swap_blocks=swapped)
    on_host = {k: v for k, v in model.state_dict().items() if not v.is_meta}
    assert set(on_host) == host_resident_keys(model, swapped)
    assert len(on_host) == 4 * swapped and all(k.startswith(("block.layers.3.", "block.layers.7.", "block.layers.4.",
                                                              "block.layers.5.", "block.layers.6."))
                                               for k in on_host)  # fmt: skip
    assert all(v.dtype == (torch.float8_e4m3fn if fp8 else torch.bfloat16) for v in on_host.values())  # FP8 stays FP8
    device_bytes = sum(t.nbytes for t in [*model.parameters(), *model.buffers()] if t.is_meta)
    assert counter.total == device_bytes  # nothing went to the device but what stays there
    recipe = validate_recipe({"model": {"preset": "tiny", "fp8_base": fp8, "blocks_to_swap": swapped},
                              "data": {"dataset": "unused"}, "lora": {"rank": 4}})  # fmt: skip
    planned = plan_settings(recipe,
                            MemorySettings(True,
                                           fp8_base=fp8, blocks_to_swap=swapped)).components["frozen_weights"] * GB
    # the plan counts the running and the prefetched swapped layer on top of what the load places
    pair = 2 * max(sum(v.nbytes for k, v in on_host.items() if k.startswith(f"block.layers.{i}.")) for i in range(3, 8))
    assert planned - pair <= device_bytes <= planned, (planned, pair, device_bytes)
