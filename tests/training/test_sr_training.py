"""Training a super-resolution LoRA: the recipe, the datasets it takes, the checkpoints it refuses, a short run."""

from __future__ import annotations

import json

import pytest
import torch

from hhtune.adapters.formats.read import read_adapter
from hhtune.contract import MANIFEST
from hhtune.model import CheckpointError, HappyHorseTransformer, ModelConfig, save_checkpoint
from hhtune.recipe import RecipeError, validate_recipe
from hhtune.training import TrainingDataset, build_model, train
from hhtune.training.checks import check_dataset, check_recipe
from hhtune.training.errors import RecipeConflict
from hhtune.training.synthetic import write_synthetic_dataset


def _recipe(dataset, out, **model):
    model = {"preset": "tiny", "variant": "sr_1080p", "gradient_checkpointing": False, **model}
    crop = {"sr_crop": [64, 64]} if model["variant"].startswith("sr_") else {}
    return validate_recipe({
        "model": model,
        "lora": {"rank": 2, "init": "gaussian"},
        "data": {"dataset": str(dataset), **crop},
        "train": {"max_steps": 3, "output_dir": str(out), "mixed_precision": "no"},
        "validation": {"at_end": False},
        "logging": {"wandb_mode": "disabled"},
        "export": {"formats": ["peft", "comfyui"]},
    })  # fmt: skip


def test_an_sr_run_trains_on_crops_and_its_adapter_names_the_stage(tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "d", clips=2, latent_hw=(4, 6), sr_scale=2)
    recipe = _recipe(dataset, tmp_path / "run")
    assert recipe.preset_config().local_attn_layers and recipe.preset_config().coords_style == "v1"
    run = train(recipe, log=lambda *_: None)
    info = json.loads((run / "run_info.json").read_text())
    # mutation: finish_run without "variant" -> the run's files name no stage
    assert info["variant"] == "sr_1080p"
    assert read_adapter(run / "export" / "comfyui" / "adapter_comfyui.safetensors").metadata.variant == "sr_1080p"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss_audio"] == 0.0 and torch.isfinite(torch.tensor(m["loss"])) for m in metrics if "loss" in m)


def test_sr_crop_is_whole_patches_and_only_for_sr_variants(tmp_path):
    assert _recipe(tmp_path, tmp_path, variant="sr_540p").data.sr_crop == [64, 64]
    with pytest.raises(RecipeError, match=r"data.sr_crop \[64, 40\]: \[height, width\], each side a positive"):
        validate_recipe({"model": {"preset": "tiny", "variant": "sr_540p"},
                         "data": {"dataset": "d", "sr_crop": [64, 40]}})  # fmt: skip
    # mutation: dropping the Recipe check -> a first-stage run silently ignores the crop
    with pytest.raises(RecipeError, match=r"data.sr_crop crops the high-resolution clips of a super-resolution run"):
        validate_recipe({"model": {"preset": "tiny"}, "data": {"dataset": "d", "sr_crop": [64, 64]}})


def test_a_version_1_dataset_still_trains_the_first_stage_and_an_sr_run_says_what_to_rebuild(tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "d", clips=2)
    manifest = json.loads((dataset / MANIFEST).read_text())
    (dataset / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    data = TrainingDataset(dataset)  # mutation: READABLE_FORMAT_VERSIONS = (2,) -> refused as too old
    assert not data.has_sr and data.collate([0], 0).sr_video is None
    first = validate_recipe({"model": {"preset": "tiny"}, "data": {"dataset": str(dataset)}})
    check_dataset(first, data)
    # mutation: no has_sr check -> the run fails at its first step instead
    with pytest.raises(RecipeConflict, match=r"has no sr_video_latents column \(format 1\).*sr_resolution: 1080p"):
        check_dataset(_recipe(dataset, tmp_path / "run"), data)


def test_the_dataset_must_hold_the_variant_s_resolution(tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "d", clips=1, sr_scale=2)
    manifest = json.loads((dataset / MANIFEST).read_text())
    (dataset / MANIFEST).write_text(json.dumps({**manifest, "settings": {"sr_resolution": "540p"}}))
    data = TrainingDataset(dataset)
    check_dataset(_recipe(dataset, tmp_path / "run", variant="sr_540p"), data)
    with pytest.raises(RecipeConflict, match=r"holds the clips at 540p .* the 1080p stage"):
        check_dataset(_recipe(dataset, tmp_path / "run"), data)


def test_sr_runs_refuse_first_stage_validation(tmp_path):
    recipe = _recipe(tmp_path, tmp_path / "run").model_copy(deep=True)
    recipe.validation.prompts = ["a product shot"]
    recipe.validation.at_end = True
    # mutation: no _check_sr -> the SR model would be sampled as a first-stage one at the end of the run
    with pytest.raises(RecipeConflict, match="trains a super-resolution stage"):
        check_recipe(recipe, device_type="cpu", fsdp=False)


@pytest.mark.parametrize("saved,trained,layout", [
    ("sr_1080p", "distill", "the sr_1080p layout"),
    ("base", "sr_540p", "a first-stage"),
    ("sr_540p", "sr_1080p", "the sr_540p layout"),
])  # fmt: skip
def test_a_checkpoint_of_another_stage_is_refused_naming_its_layout(tmp_path, saved, trained, layout):
    torch.manual_seed(0)
    save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny", saved)), tmp_path / "ckpt")
    for preset in (None, "tiny"):  # the checkpoint's own config, or the preset's shapes
        recipe = _recipe(tmp_path, tmp_path / "run", checkpoint=str(tmp_path / "ckpt"), preset=preset,
                         variant=trained)  # fmt: skip
        # mutation: build_model loading with load_checkpoint alone (no check_variant) -> it loads
        with pytest.raises(CheckpointError, match=layout):
            build_model(recipe.model)
    same = _recipe(tmp_path, tmp_path / "run", checkpoint=str(tmp_path / "ckpt"), preset=None, variant=saved)
    assert build_model(same.model).config.sr_variant == (saved if saved.startswith("sr") else None)


@pytest.mark.parametrize("loss", [{"mouth_weight": 3.0}, {"balance": "ema"}, {"audio_sigma": "independent"}])
def test_first_stage_loss_options_are_refused_for_sr_runs(tmp_path, loss):
    # mutation: _check_sr without the first-stage options -> they would be silently ignored by the SR objective
    recipe = _recipe(tmp_path, tmp_path / "run").model_copy(deep=True)
    recipe.loss = recipe.loss.model_copy(update=loss)
    with pytest.raises(RecipeConflict, match=f"loss.{next(iter(loss))} shape"):
        check_recipe(recipe, device_type="cpu", fsdp=False)


def test_an_sr_run_with_validation_prompts_is_told_to_judge_it_with_evaluate(tmp_path):
    # mutation: _check_sr without the validation check -> the first-stage sampler would render the SR model
    recipe = _recipe(tmp_path, tmp_path / "run").model_copy(deep=True)
    recipe.validation = recipe.validation.model_copy(update={"prompts": ["A host smiles."], "at_end": True})
    with pytest.raises(RecipeConflict, match=r"python -m hhtune.evaluate RUN_DIR --first-stage FIRST_STAGE_DIR"):
        check_recipe(recipe, device_type="cpu", fsdp=False)
