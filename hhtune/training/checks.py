"""Settings that cannot run together, found before the model loads.

:meth:`hhtune.training.trainer.LoraTrainer.setup` calls :func:`check_recipe` first (the recipe
and the launch alone, before anything loads), then :func:`check_dataset` once the dataset's
metadata is read, so a run that cannot work stops in seconds instead of after the text encoder
and 30 GB of weights have loaded, or at its first validation. Each check keeps the error class
is :class:`~hhtune.training.errors.RecipeConflict` (or a ``ValueError``): bad input, exit code 2,
as the same conflict is when ``python -m hhtune.plan`` finds it.
"""

from __future__ import annotations

from ..contract import SR_VIDEO_LATENTS
from ..model.placement import SWAP_WITH_DORA, swapped_layers
from ..recipe import Recipe
from .data import TrainingDataset
from .errors import RecipeConflict
from .outputs import encoder_paths, validation_enabled


def check_recipe(recipe: Recipe, *, device_type: str, fsdp: bool) -> None:
    """Raise if the recipe cannot run on ``device_type`` (``"cuda"``, ``"cpu"`` ...) with or without FSDP2."""
    _check_launch(recipe, device_type, fsdp)
    _check_model(recipe)
    _check_sr(recipe)
    merged = [f for f in recipe.export.formats if f.startswith("merged")]
    if merged and recipe.model.checkpoint is None:
        raise RecipeConflict(f"export.formats {merged} merge into a base checkpoint on disk, but model.checkpoint is "
                            "null (a random preset); remove them from export.formats "
                            "or set model.checkpoint")  # fmt: skip


def _check_launch(recipe: Recipe, device_type: str, fsdp: bool) -> None:
    if recipe.optimizer.eight_bit and device_type != "cuda":
        raise RecipeConflict("optimizer.eight_bit needs a CUDA device (bitsandbytes); set it to false on CPU")
    if fsdp and recipe.model.eval_checkpoint is not None:
        raise RecipeConflict("model.eval_checkpoint is not supported with FSDP2 yet: validate on the trained "
                            "model (model.eval_checkpoint=null) or train without FSDP")  # fmt: skip
    if fsdp and recipe.model.blocks_to_swap:
        raise RecipeConflict("model.blocks_to_swap does not combine with FSDP2, which already splits the frozen "
                            "weights across processes: set model.blocks_to_swap=0 "
                            "(see python -m hhtune.plan --world-size N)")  # fmt: skip


def _check_model(recipe: Recipe) -> None:
    """Block swap against the adapter and the architecture, where the recipe names it (``model.preset``).

    The LoRA layers are checked against the preset when the recipe is validated.
    """
    swap = recipe.model.blocks_to_swap
    if swap and recipe.lora.use_dora:
        raise ValueError(SWAP_WITH_DORA)
    config = recipe.preset_config()
    if config is not None:  # else the checkpoint's own config is checked when block swap is applied
        swapped_layers(config.num_layers, swap)  # raises for a count outside 0..num_layers


def _check_sr(recipe: Recipe) -> None:
    """An SR run's validation would render with a first-stage sampler; it renders nothing during training, and
    ``python -m hhtune.evaluate --first-stage`` judges its checkpoints after it. The first stage's audio and mouth
    options have no meaning in the SR objective (no audio loss; mouth boxes on the base grid), so they are refused,
    not ignored."""
    if not recipe.trains_sr:
        return
    loss = recipe.loss
    first_stage = [key for key, on in (("loss.mouth_weight", loss.mouth_weight != 1.0),
                                       ("loss.balance", loss.balance != "none"),
                                       ("loss.audio_sigma", loss.audio_sigma != "tied")) if on]  # fmt: skip
    if first_stage:
        raise RecipeConflict(f"{', '.join(first_stage)} shape(s) the first stage's objective; the SR objective of "
                             f"model.variant {recipe.model.variant} has no audio loss and no mouth boxes at its "
                             "size: leave them at their defaults")  # fmt: skip
    if validation_enabled(recipe):
        raise RecipeConflict(f"model.variant {recipe.model.variant} trains a super-resolution stage, which the "
                             "first-stage validation sampler cannot render: set validation.prompts: [] and judge "
                             "the checkpoints after the run with python -m hhtune.evaluate RUN_DIR --first-stage "
                             "FIRST_STAGE_DIR")  # fmt: skip


def check_dataset(recipe: Recipe, data: TrainingDataset) -> None:
    """Raise if the dataset does not suit the recipe: text width against the preset, encoders for validation, the
    mouth boxes for ``loss.mouth_weight``, the clips at the SR size for an SR variant (and at that variant's
    resolution, where the manifest says)."""
    if recipe.trains_sr:
        _check_sr_dataset(recipe, data)
    check_mouth_boxes(recipe, data)
    config = recipe.preset_config()
    if config is not None:  # else the checkpoint's config is known once it loads; the trainer checks it then
        check_text_channels(data, config.text_in_channels)
    if validation_enabled(recipe):
        encoder_paths(recipe, data)  # raises when neither validation.encoders nor the manifest names them


def _check_sr_dataset(recipe: Recipe, data: TrainingDataset) -> None:
    variant, resolution = recipe.model.variant, recipe.model.variant.removeprefix("sr_")
    if not data.has_sr:
        raise RecipeConflict(f"model.variant {variant} learns from the clips at the SR size, but {data.path} has no "
                             f"{SR_VIDEO_LATENTS} column (format {data.manifest.get('format_version')}): rebuild it "
                             f"with `sr_resolution: {resolution}` in the data config (python -m data_prep encode)")
    built = (data.manifest.get("settings") or {}).get("sr_resolution")
    if built is not None and built != resolution:
        raise RecipeConflict(f"{data.path} holds the clips at {built} ({SR_VIDEO_LATENTS}), but model.variant "
                             f"{variant} is the {resolution} stage: train sr_{built}, or rebuild the dataset with "
                             f"`sr_resolution: {resolution}`")  # fmt: skip


def check_text_channels(data: TrainingDataset, model_channels: int) -> None:
    """Raise if the dataset's text features were encoded for a model of another text width."""
    if data.text_channels != model_channels:
        raise RecipeConflict(
            f"the dataset's text features have {data.text_channels} channels but the model takes {model_channels}: "
            "the dataset was encoded for another model (e.g. tiny encoders for the 15b preset)"
        )


def check_mouth_boxes(recipe: Recipe, data: TrainingDataset) -> None:
    """Raise if ``loss.mouth_weight`` is on and the dataset has no mouth boxes (format 1, or built without them)."""
    if recipe.loss.mouth_weight != 1.0 and not data.has_mouth_boxes:
        raise RecipeConflict(
            f"loss.mouth_weight is {recipe.loss.mouth_weight:g} but {data.path} has no mouth_boxes column (a dataset "
            "of format 1, or built with mouth_regions: false): rebuild it with `mouth_regions: true` in the data "
            "config (python -m data_prep build FOOTAGE_DIR --out DATASET_DIR --config DATA_CONFIG --encode), "
            "or set loss.mouth_weight: 1"
        )
