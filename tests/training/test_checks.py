"""Settings that cannot run together stop the run in setup(), before the model (or even the dataset) loads."""

from __future__ import annotations

import pytest
import torch
from _runs import _recipe

from hhtune.cli import exit_code
from hhtune.model import HappyHorseTransformer
from hhtune.recipe import validate_recipe
from hhtune.training import LoraTrainer, RecipeConflict, TrainingDataset, TrainingError
from hhtune.training.synthetic import write_synthetic_dataset

FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
CONFLICTS = {
    "block swap with FSDP2": ({"model": {"blocks_to_swap": 2}}, FSDP2, RecipeConflict,
                              "blocks_to_swap does not combine with FSDP2"),
    "eval checkpoint with FSDP2": ({"model": {"eval_checkpoint": "distill"}}, FSDP2, RecipeConflict,
                                   "eval_checkpoint is not supported with FSDP2"),
    "block swap with DoRA": ({"model": {"blocks_to_swap": 2}, "lora": {"use_dora": True}}, {}, ValueError,
                             "blocks_to_swap does not work with lora.use_dora"),
    "more swapped blocks than layers": ({"model": {"blocks_to_swap": 9}}, {}, ValueError,
                                        r"blocks_to_swap = 9: must be in 0..8"),
    "merged export of a random preset": ({"export": {"formats": ["merged_single"]}}, {}, RecipeConflict,
                                         r"export.formats \['merged_single'\] merge into a base checkpoint"),
    "8-bit AdamW without CUDA": ({"optimizer": {"eight_bit": True}}, {}, RecipeConflict,
                                 "eight_bit needs a CUDA device"),
}  # fmt: skip


def _must_not_load(*_: object, **__: object) -> None:
    pytest.fail("loaded before the recipe was checked")


@pytest.mark.parametrize("name", list(CONFLICTS))
def test_recipe_conflicts_are_refused_before_anything_loads(name, tmp_path, monkeypatch):
    sections, env, error, match = CONFLICTS[name]
    if name == "8-bit AdamW without CUDA" and torch.cuda.is_available():
        pytest.skip("the check is about a machine without CUDA")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(HappyHorseTransformer, "__init__", _must_not_load)
    monkeypatch.setattr(TrainingDataset, "__init__", _must_not_load)
    recipe = validate_recipe(_recipe(tmp_path / "dataset", tmp_path / "run", **sections))
    with pytest.raises(error, match=match) as e:
        LoraTrainer(recipe, log=lambda *_: None).setup()
    assert exit_code(e.value) == 2  # bad input, as when python -m hhtune.plan finds the same conflict
    assert not (tmp_path / "run").exists()  # nothing written either


def test_dataset_that_does_not_suit_the_recipe_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(HappyHorseTransformer, "__init__", _must_not_load)
    wide = write_synthetic_dataset(tmp_path / "wide", clips=1, text_channels=48)
    with pytest.raises(RecipeConflict, match="text features have 48 channels but the model takes 32"):
        LoraTrainer(validate_recipe(_recipe(wide, tmp_path / "run")), log=lambda *_: None).setup()
    data = write_synthetic_dataset(tmp_path / "ds", clips=1)  # its manifest names no encoders
    caption = TrainingDataset(data).ds[0]["caption"]  # a prompt the text encoder is not needed for
    recipe = _recipe(data, tmp_path / "run", validation={"prompts": [caption], "at_end": True})
    with pytest.raises(TrainingError, match="validation needs encoders"):  # not at the first validation
        LoraTrainer(validate_recipe(recipe), log=lambda *_: None).setup()
