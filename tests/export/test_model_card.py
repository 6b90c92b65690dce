"""The model card written beside an adapter in place of PEFT's empty template."""

from __future__ import annotations

from adapter_helpers import trained

from hhtune.export import FORMATS
from hhtune.export.model_card import FORMAT_USE, write_model_card


def test_model_card_replaces_the_peft_template(tmp_path):
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
    assert "lip_sync: 0.8" in card


def test_card_ships_with_its_stills_and_names_every_format_and_the_real_hours(tmp_path):
    """The adapter folder alone carries the card's images; every export format is listed; hours come from seconds."""
    model = trained()
    model.save_pretrained(str(tmp_path / "run" / "adapter"))
    (tmp_path / "run" / "samples" / "step-00000040").mkdir(parents=True)
    (tmp_path / "run" / "samples" / "step-00000040" / "prompt00.png").write_bytes(b"\x89PNG still")
    info = {"steps": 40, "dataset_summary": {"clips": 9, "seconds": 900.0}}
    card = write_model_card(tmp_path / "run" / "adapter", info).read_text()
    assert "clips: 9" in card and "hours: 0.25 (900.0 s)" in card
    assert "![validation still](validation/prompt00.png)" in card and "../" not in card
    assert (tmp_path / "run" / "adapter" / "validation" / "prompt00.png").read_bytes() == b"\x89PNG still"
    assert set(FORMAT_USE) == set(FORMATS)
    for fmt in FORMATS:
        assert f"  - `{fmt}`: " in card, fmt


def test_the_card_says_which_stage_the_adapter_applies_to_and_its_wan2gp_multiplier(tmp_path):
    """Wan2GP loads every LoRA into both DiTs (phase 1: first stage, phase 2: SR), so the card names the multiplier."""
    (tmp_path / "a").mkdir()
    # mutation: _stage_lines ignoring the variant -> an SR adapter's card says first stage and 1;0
    sr = write_model_card(tmp_path / "a", {"variant": "sr_1080p"}).read_text()
    assert "the sr_1080p super-resolution model only" in sr and "--sr 1080p --sr-model SR_DIR --sr-adapter" in sr
    assert "multiplier to `0;1`" in sr
    first = write_model_card(tmp_path / "a", {"variant": "distill"}).read_text()
    assert "the first stage (base or distill)" in first and "multiplier to `1;0`" in first
