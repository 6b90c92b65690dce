"""The memory plan: real model code on fake tensors, scaled by layer kind, and its recommendations."""

from __future__ import annotations

import json

import pytest
import torch

from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.plan import GB, MemorySettings, PlanError, check_memory_plan, plan_recipe, plan_settings
from hhtune.plan.__main__ import main
from hhtune.plan._scale import scaled_trace
from hhtune.plan._trace import StepShape
from hhtune.recipe import validate_recipe


def _recipe(preset: str = "mid", seconds: float = 1.0, resolution: int = 128):
    return validate_recipe({"model": {"preset": preset, "gradient_checkpointing": False},
                            "data": {"dataset": "unused"}, "lora": {"rank": 8},
                            "validation": {"seconds": seconds, "base_resolution": resolution}})  # fmt: skip


@pytest.mark.parametrize("checkpointing", [False, True])
def test_scaled_trace_equals_the_full_trace(checkpointing):
    config, lora, shape = ModelConfig.preset("mid"), LoraSettings(rank=8), StepShape(1, (2, 4, 6), 9, 16)
    full = scaled_trace(config, lora, shape, training=True, checkpointing=checkpointing, full=True)
    scaled = scaled_trace(config, lora, shape, training=True, checkpointing=checkpointing)
    assert full.activations > 0 and (scaled.activations, scaled.peak) == (full.activations, full.peak)


def test_plan_json_has_the_promised_shape_and_checkpointing_lowers_activations(capsys):
    assert main(["recipes/quickstart.yaml", "model.preset=mid", "--json", "--gpu-memory", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"train_peak_gb", "validation_peak_gb", "components", "fits"} <= set(out) and out["fits"] is True
    assert {"frozen_weights", "lora_params", "optimizer_state", "activations", "temporaries"} <= set(out["components"])
    r = _recipe()
    plain = plan_settings(r, MemorySettings(False))
    ckpt = plan_settings(r, MemorySettings(True))
    offload = plan_settings(r, MemorySettings(True, activation_offload=True))
    assert ckpt.components["activations"] < plain.components["activations"] / 3
    assert offload.components["activations"] < ckpt.components["activations"]
    assert ckpt.train_peak_gb < plain.train_peak_gb
    # parameters are counted from their sizes: mid LoRA rank 8 in fp32, AdamW twice that
    assert plain.components["optimizer_state"] == pytest.approx(2 * plain.components["lora_params"])


def test_block_swap_and_fp8_lower_the_frozen_weights():
    r = _recipe()
    base = plan_settings(r, MemorySettings(True))
    swap = plan_settings(r, MemorySettings(True, blocks_to_swap=3))
    fp8 = plan_settings(r, MemorySettings(True, fp8_base=True))
    with torch.device("meta"):
        layers = [sum(p.nbytes for p in layer.parameters())
                  for layer in HappyHorseTransformer(ModelConfig.preset("mid")).block.layers]
    # layers 3-5 live on the host; the device holds the running one and its prefetched neighbour
    expected = base.components["frozen_weights"] - (sum(layers[3:]) - layers[4] - layers[5]) / GB
    assert swap.components["frozen_weights"] == pytest.approx(expected, rel=1e-9)
    assert swap.components["frozen_weights"] < base.components["frozen_weights"]
    assert swap.components["activations"] == base.components["activations"]
    assert fp8.components["frozen_weights"] < 0.6 * base.components["frozen_weights"]


@pytest.mark.slow  # a recommendation search: traces the mid model under several settings
def test_recommendation_is_the_cheapest_setting_that_fits():
    r = _recipe(seconds=5.0, resolution=256)
    plain = plan_settings(r, MemorySettings(False))
    ckpt = plan_settings(r, MemorySettings(True))
    budget = (ckpt.peak_gb * 1.05 + 0.5 + plain.peak_gb * 1.05 + 0.5) / 2  # between the two
    plan = plan_recipe(r, budget)
    assert plan.fits is False and plan.recommendation is not None
    assert plan.recommendation.settings == MemorySettings(True) and plan.recommendation.fits
    assert plan_recipe(r, 0.01).recommendation is None


def test_fsdp_shards_the_frozen_weights():
    r = _recipe()
    one = plan_settings(r, MemorySettings(True))
    four = plan_settings(r, MemorySettings(True), world_size=4)
    assert four.components["frozen_weights"] < one.components["frozen_weights"]
    assert four.components["lora_params"] == pytest.approx(one.components["lora_params"] / 4)


def test_bad_input_fails_with_the_fix(capsys):
    with pytest.raises(PlanError, match=r"model.blocks_to_swap = 7: must be in 0..6"):
        plan_settings(_recipe(), MemorySettings(True, blocks_to_swap=7))
    with pytest.raises(PlanError, match=r"needs model.preset"):
        plan_settings(validate_recipe({"model": {"checkpoint": "/x"}, "data": {"dataset": "d"}}), MemorySettings(True))
    with pytest.raises(PlanError, match="multiple of 32"):
        plan_settings(_recipe(), MemorySettings(True), resolution=48)
    assert main(["recipes/quickstart.yaml", "--gpu-memory", "-1"]) == 2
    assert "--gpu-memory must be positive" in capsys.readouterr().err
    assert main(["recipes/quickstart.yaml", "model.blocks_to_swap=-1"]) == 2
    assert "model.blocks_to_swap" in capsys.readouterr().err
    assert main(["nope.yaml"]) == 2


def test_15b_numbers_are_in_the_published_range():
    """15B at 256p 5 s, rank 32: ~28.5 GB of bf16 weights (15.3B params) and a few GB of checkpointed activations."""
    r = validate_recipe({"model": {"preset": "15b"}, "data": {"dataset": "d"}, "lora": {"rank": 32},
                         "validation": {"seconds": 5.0, "base_resolution": 256}})  # fmt: skip
    plan = plan_settings(r, MemorySettings(True))
    assert plan.components["frozen_weights"] == pytest.approx(15_299_419_152 * 2 / GB, rel=0.01)
    assert plan.train_shape.tokens == 32 * 8 * 15 + 125 + 640
    assert 1 < plan.components["activations"] < 10 and plan.train_peak_gb < 45


@pytest.mark.slow  # three plans of the mid model, two with a recommendation search
def test_training_check_refuses_what_does_not_fit_unless_told():
    r, cpu, logged = _recipe(), torch.device("cpu"), []
    assert check_memory_plan(r, cpu, log=logged.append) is None and "not computed" in logged[0]
    plan = check_memory_plan(r, cpu, log=logged.append, gpu_memory_gb=16)
    assert plan.fits and "training step peak" in logged[-1]
    with pytest.raises(PlanError,
                       match=r"needs .* GB with headroom but the device has 0.1 GB.*ignore_memory_plan=true"):
        check_memory_plan(r, cpu, log=None, gpu_memory_gb=0.1)
    lenient = r.model_copy(update={"model": r.model.model_copy(update={"ignore_memory_plan": True})})
    assert check_memory_plan(lenient, cpu, log=logged.append, gpu_memory_gb=0.1).fits is False
    assert logged[-1].startswith("warning:")


def test_training_shape_comes_from_the_dataset_then_the_flags_then_validation(tmp_path, capsys):
    """A dataset is planned at its largest bucket and the plan says so; flags override; no dataset is said plainly."""
    from hhtune.training.synthetic import write_synthetic_dataset

    # 9 frames: 3 latent frames; buckets 4x4 and 4x6 latents (64x64 and 96x64 pixels)
    data = write_synthetic_dataset(tmp_path / "ds", clips=3, frames=9, latent_hw=(4, 4), buckets=2)
    r = validate_recipe({"model": {"preset": "mid", "gradient_checkpointing": False}, "lora": {"rank": 8},
                         "data": {"dataset": str(data)},
                         "validation": {"seconds": 1.0, "base_resolution": 128}})  # fmt: skip
    plan = plan_settings(r, MemorySettings(True))
    assert plan.train_shape == StepShape(1, (3, 4, 6), 9, 640)
    assert plan.train_source.startswith(f"dataset {data}: largest of 2 bucket(s), 96x64 9 frames")
    flags = plan_settings(r, MemorySettings(True), seconds=0.2, resolution=64)
    assert flags.train_shape.video == (2, 4, 8) and flags.train_shape.audio == 5  # 16:9 at 64p: 128x64
    assert flags.train_source == "--seconds 0.2 --resolution 64"
    missing = r.model_copy(update={"data": r.data.model_copy(update={"dataset": str(tmp_path / "none")})})
    fallback = plan_settings(missing, MemorySettings(True))
    assert fallback.train_shape == fallback.validation_shape
    assert "no dataset at" in fallback.train_source and "--seconds and --resolution" in fallback.train_source

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"model": {"preset": "mid"}, "lora": {"rank": 8}, "data": {"dataset": str(data)}}))
    assert main([str(recipe), "--json"]) == 0
    shape = json.loads(capsys.readouterr().out)["train_shape"]
    assert shape["latent"] == [3, 4, 6] and shape["source"].startswith(f"dataset {data}")
    assert main([str(recipe)]) == 0
    assert f"training clips planned from dataset {data}: largest" in capsys.readouterr().out


def test_validation_sr_plans_the_sr_dit_alone_on_the_device_and_the_decode_at_the_delivered_size():
    """validation.sr: the SR DiT (bf16, as large as the base) and its forward at 1080p, with the trained model on the
    host (the optimizer state stays); the decode workspace grows to the delivered size."""
    base = {"model": {"preset": "15b"}, "data": {"dataset": "d"}, "lora": {"rank": 32},
            "validation": {"seconds": 5.0, "base_resolution": 256}}  # fmt: skip
    plain = plan_settings(validate_recipe(base), MemorySettings(True))
    base["validation"] |= {"sr": "1080p", "sr_model": "/ckpt/1080p_sr"}
    sr = plan_settings(validate_recipe(base), MemorySettings(True))
    assert plain.components["sr_model"] == plain.components["sr_forward"] == 0
    assert sr.components["sr_model"] == pytest.approx(15_299_419_152 * 2 / GB, rel=0.01)
    assert sr.components["sr_forward"] > 10 * sr.components["validation_forward"]  # 2048x1088: 17x the tokens
    assert sr.components["vae_decode_workspace"] > 10 * plain.components["vae_decode_workspace"]
    c = sr.components
    assert sr.validation_peak_gb == pytest.approx(max(
        c["frozen_weights"] + c["lora_params"] + c["optimizer_state"] + c["validation_forward"],
        c["frozen_weights"] + c["lora_params"] + c["optimizer_state"] + c["vaes"] + c["vae_decode_workspace"],
        c["optimizer_state"] + c["sr_model"] + c["sr_forward"]))  # fmt: skip
    assert sr.validation_peak_gb > plain.validation_peak_gb and sr.train_peak_gb == plain.train_peak_gb


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_sr_models_local_layers_trace_and_scale_like_the_others(checkpointing):
    """The 1080p SR model's local layers need the forward's frame window, and are a layer kind of their own."""
    # mutation: _trace calling forward_tokens without the plan -> "a local attention layer needs the plan's local
    # window"; _scale without the local kind -> local_attn_layers outside the reduced model (or a wrong total)
    config = ModelConfig.preset("mid", "sr_1080p")
    lora, shape = LoraSettings(rank=8), StepShape(1, (3, 4, 6), 9, 16)
    full = scaled_trace(config, lora, shape, training=True, checkpointing=checkpointing, full=True)
    scaled = scaled_trace(config, lora, shape, training=True, checkpointing=checkpointing)
    assert full.activations > 0 and (scaled.activations, scaled.peak) == (full.activations, full.peak)
    assert scaled_trace(ModelConfig.preset("15b", "sr_1080p"), lora, shape, training=False).peak > 0


def test_an_sr_run_is_planned_at_the_sr_size_and_its_crop():
    """An SR recipe trains on the dataset bucket at the SR size (the SR stage's own rounding), or on its crop."""
    def plan(variant, **data):
        r = validate_recipe({"model": {"preset": "15b", "variant": variant}, "lora": {"rank": 32},
                             "data": {"dataset": "unused", **data},
                             "validation": {"seconds": 2.0, "base_resolution": 256}})  # fmt: skip
        return plan_settings(r, MemorySettings(True))

    first, sr540, sr1080 = plan("distill"), plan("sr_540p"), plan("sr_1080p")
    crop = plan("sr_1080p", sr_crop=[512, 896])
    # mutation: training_shape ignoring the variant -> every plan at 480x256
    assert first.train_shape.video == (13, 16, 30)
    assert sr540.train_shape.video == (13, 32, 60) and sr1080.train_shape.video == (13, 68, 128)  # 960x512, 2048x1088
    # mutation: the crop not applied -> the whole 1080p frame
    assert crop.train_shape.video == (13, 32, 56) and "cut to data.sr_crop [512, 896]" in crop.train_source
    assert first.train_peak_gb < crop.train_peak_gb < sr1080.train_peak_gb
