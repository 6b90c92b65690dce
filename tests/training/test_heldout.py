"""validation.prompts: auto: captions of clips held out of training, chosen reproducibly across languages."""

from __future__ import annotations

import pytest
from _runs import _recipe

from hhtune.recipe import validate_recipe
from hhtune.training import TrainingDataset, TrainingError
from hhtune.training.heldout import held_out_rows, hold_out_validation_clips
from hhtune.training.synthetic import write_synthetic_dataset


def test_spoken_clips_first_one_language_after_another_reproducibly():
    ids = [f"c{i}" for i in range(8)]
    langs = ["en", "en", "en", "zh", "zh", "de", "de", "de"]
    said = ["hi", "", "yo", "ni hao", "", "", "hallo", "tag"]
    rows = held_out_rows(ids, langs, said, 3, seed=1)
    assert sorted(langs[r] for r in rows) == ["de", "en", "zh"]  # one per language before a second from any
    assert all(said[r] for r in rows)  # spoken clips first
    assert held_out_rows(ids, langs, said, 3, seed=1) == rows
    assert sorted(held_out_rows(ids, langs, said, 8, seed=1)) == list(range(8))  # all of them, each once
    assert len({tuple(held_out_rows(ids, langs, said, 1, seed=s)) for s in range(20)}) > 1  # the seed picks


def test_auto_prompts_are_held_out_captions_never_drawn_for_training(tmp_path):
    data_dir = write_synthetic_dataset(tmp_path / "ds", clips=6, buckets=2)
    data = TrainingDataset(data_dir)
    recipe = validate_recipe(_recipe(data_dir, tmp_path / "run", validation={"prompts": "auto", "auto_clips": 2}))
    logged: list[str] = []
    resolved = hold_out_validation_clips(recipe, data, logged.append)
    captions = data.ds["caption"]
    held = [i for i, c in enumerate(captions) if c in resolved.validation.prompts]
    assert len(resolved.validation.prompts) == 2 and len(held) == 2
    drawn = {r for epoch in range(3) for batch in data.epoch_batches(epoch, 0, 1) for r in batch}
    assert drawn == set(range(6)) - set(held)
    assert "held out 2 clip(s)" in logged[0]
    explicit = validate_recipe(_recipe(data_dir, tmp_path / "run", validation={"prompts": ["a red ball"]}))
    assert hold_out_validation_clips(explicit, data, logged.append) is explicit


def test_auto_prompts_need_a_clip_left_to_train_on(tmp_path):
    data_dir = write_synthetic_dataset(tmp_path / "ds", clips=2)
    recipe = validate_recipe(_recipe(data_dir, tmp_path / "run", validation={"prompts": "auto", "auto_clips": 2}))
    with pytest.raises(TrainingError, match=r"holds out 2 clip.*has only 2"):
        hold_out_validation_clips(recipe, TrainingDataset(data_dir), print)
