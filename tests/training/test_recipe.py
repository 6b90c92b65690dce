"""Recipes: every shipped recipe validates, and every mistake names the key and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hhtune.recipe import RecipeError, load_recipe, validate_recipe

ROOT = Path(__file__).parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
MINIMAL = {"model": {"preset": "tiny"}, "data": {"dataset": "ds"}}


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def _unchanged(written: dict, validated: dict, where: str = "") -> list[str]:
    """Keys whose validated value differs from the one written in the file."""
    changed = []
    for key, value in written.items():
        if isinstance(value, dict):
            changed += _unchanged(value, validated[key], f"{where}{key}.")
        elif validated[key] != value:
            changed.append(f"{where}{key}: wrote {value!r}, got {validated[key]!r}")
    return changed


@pytest.mark.parametrize("path", [p for p in RECIPES if not p.name.endswith("_data.yaml")], ids=lambda p: p.name)
def test_shipped_recipes_validate_and_keep_every_value(path):
    recipe = load_recipe(path)
    assert _unchanged(yaml.safe_load(path.read_text()), recipe.model_dump()) == []
    assert recipe.preset_config() is not None  # every shipped recipe names its architecture (the plan needs it)


def test_the_recipes_the_docs_name_are_the_recipes_shipped():
    docs = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]
    named = {m for d in docs for m in re.findall(r"recipes/([\w.-]+\.yaml)", d.read_text())}
    assert named == {p.name for p in RECIPES}


def test_typo_names_the_key_and_the_allowed_keys(tmp_path):
    p = _write(tmp_path, "model: {preset: tiny}\ndata: {dataset: ds}\nlora: {rnak: 8}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "lora.rnak: unknown key" in msg
    assert ("allowed keys here: alpha, dropout, embedders, experts, init, layers, rank, targets, use_dora, "
            "use_rslora") in msg


def test_unknown_section_lists_sections(tmp_path):
    with pytest.raises(RecipeError,
                       match="trian: unknown key; allowed keys here: checkpointing, data, "
                             "export, logging, lora, loss, model"):
        validate_recipe({**MINIMAL, "trian": {}})


def test_bad_values_name_key_value_and_allowed_values():
    with pytest.raises(RecipeError,
                       match=r"model.variant = 'distiled': Input should be 'base', 'distill', 'sr_540p' or 'sr_1080p'"):
        validate_recipe({"model": {"preset": "tiny", "variant": "distiled"}, "data": {"dataset": "ds"}})
    with pytest.raises(RecipeError, match=r"lora.rank = 0: Input should be greater than or equal to 1"):
        validate_recipe({**MINIMAL, "lora": {"rank": 0}})
    with pytest.raises(RecipeError, match=r"export.formats.0 = 'onnx': Input should be 'peft', 'wan2gp', 'comfyui'"):
        validate_recipe({**MINIMAL, "export": {"formats": ["onnx"]}})
    with pytest.raises(RecipeError, match=r"data.dataset: required but missing"):
        validate_recipe({"model": {"preset": "tiny"}, "data": {}})
    with pytest.raises(RecipeError, match=r"set model.checkpoint .* or model.preset"):
        validate_recipe({"model": {}, "data": {"dataset": "ds"}})


def test_lora_layers_are_checked_against_the_preset():
    with pytest.raises(RecipeError, match=r"lora.layers \[8\] cannot be adapted: indices must be in 0..7"):
        validate_recipe({**MINIMAL, "lora": {"layers": [0, 8]}})
    assert validate_recipe({**MINIMAL, "lora": {"layers": [0, 2]}}).lora.layers == [0, 2]  # sandwich layers too


def test_dotted_overrides_are_typed_and_checked(tmp_path):
    p = _write(tmp_path, "model: {preset: tiny}\ndata: {dataset: ds}\n")
    r = load_recipe(p, ["train.max_steps=7", "lora.rank=4", "lora.targets=[linear_qkv]", "logging.run_name=x"])
    assert (r.train.max_steps, r.lora.rank, r.lora.targets, r.logging.run_name) == (7, 4, ["linear_qkv"], "x")
    with pytest.raises(RecipeError, match=r"train.max_step: unknown key; allowed keys here: .*max_steps"):
        load_recipe(p, ["train.max_step=7"])
    with pytest.raises(RecipeError, match=r"must look like section.key=value"):
        load_recipe(p, ["train.max_steps"])
    with pytest.raises(RecipeError, match="the key must be dotted"):
        load_recipe(p, ["steps=3"])


def test_unreadable_recipes(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(_write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(RecipeError, match="must be a mapping of sections, got list"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))


def test_caption_dropout_defaults_by_variant():
    assert validate_recipe(MINIMAL).caption_dropout == 0.0
    assert validate_recipe({"model": {"preset": "tiny", "variant": "base"},
                            "data": {"dataset": "ds"}}).caption_dropout == 0.1
    assert validate_recipe({**MINIMAL, "loss": {"caption_dropout": 0.3}}).caption_dropout == 0.3


def test_recipe_hash_is_stable_and_sensitive():
    a, b = validate_recipe(MINIMAL), validate_recipe(MINIMAL)
    assert a.hash() == b.hash()
    assert validate_recipe({**MINIMAL, "lora": {"rank": 8}}).hash() != a.hash()


def test_train_cli_reports_recipe_errors(tmp_path, capsys):
    from hhtune.train import main

    p = _write(tmp_path, "model: {preset: tiny}\ndata: {dataset: ds}\n")
    assert main([str(p), "lora.rnak=3"]) == 2
    assert "lora.rnak: unknown key" in capsys.readouterr().err
    assert main([str(p), "--print-recipe", "lora.rank=3"]) == 0
    assert "lora.rank = 3" in capsys.readouterr().out
