"""End to end on the CPU: a tiny run with two checkpoints, evaluated, reported and published."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _browser import open_in_browser
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from _runs import _recipe, _run_cli

from hhtune.contract import sr_size
from hhtune.encoders import build_tiny_encoders
from hhtune.evaluate import main
from hhtune.training.synthetic import write_synthetic_dataset

CAPTION = "A host smiles. Dialogue: <a presenter, German>: \"Hallo.\""


def _trained_run(tmp_path: Path, synthetic: dict, **sections) -> Path:
    """A tiny run trained by the training command on a synthetic dataset (``synthetic``: its options), with the tiny
    encoders and one validation prompt rendered small; ``sections`` are recipe sections on top."""
    dataset = write_synthetic_dataset(tmp_path / "ds", **synthetic)
    build_tiny_encoders(tmp_path / "enc")
    validation = {"prompts": [CAPTION], "at_end": False, "seconds": 0.2, "base_resolution": 32,
                  "encoders": str(tmp_path / "enc"), **sections.pop("validation", {})}  # fmt: skip
    trained = _run_cli(_recipe(dataset, tmp_path / "run", validation=validation, **sections), tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return tmp_path / "run"


@pytest.mark.slow
def test_evaluate_a_tiny_run(tmp_path, capsys):
    run = _trained_run(tmp_path, dict(clips=2), train={"max_steps": 4},
                       checkpointing={"every_steps": 2, "keep_last": 3})  # fmt: skip

    argv = [str(run), "--checkpoints", "all", "--seeds", "1", "--strengths", "0.5,1.0", "--drift-languages", "en"]
    assert main(argv) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert [c["label"] for c in result["checkpoints"]] == ["step-00000002", "final"]  # step 4 is the final adapter
    assert result["prompts"] == [CAPTION] and result["seeds"] == [1234] and result["strengths"] == [0.5, 1.0]
    assert {s["variant"] for s in result["samples"]} == {"base", "step-00000002", "final"}
    strength = result["recommended_strength"]
    assert strength in (0.5, 1.0) and result["transfer"]["recommended_strength"] == strength
    assert set(result["transfer"]["gaps"]) == {"0.5", "1.0"} and result["transfer"]["no_adapter_gap"] >= 0
    assert set(result["drift"]) == {"step-00000002", "final"}
    not_measured = {n["metric"] for n in result["not_measured"]}
    assert "voice_similarity" in not_measured  # synthetic data: no footage to compare voices with, and it says so

    card = (run / "adapter" / "README.md").read_text()
    assert f"- recommended strength: {strength}" in card
    with safe_open(run / "export" / "peft" / "adapter_model.safetensors", framework="pt") as f:
        assert json.loads(f.metadata()["hhtune"])["recommended_strength"] == strength

    seen = open_in_browser(run, "eval/report.html")
    assert seen["recommended"] == result["recommendation"]["checkpoint"]
    assert len(seen["videos"]) == 3 and all(v["ready"] >= 1 and v["error"] is None for v in seen["videos"])
    assert seen["images"] and all(i["width"] > 0 for i in seen["images"])
    assert all(link["ok"] for link in seen["links"]) and CAPTION in seen["text"]


@pytest.mark.slow
def test_evaluate_judges_the_clips_as_delivered_through_the_recipes_sr_stage(tmp_path):
    """validation.sr in the recipe: the brand clips are rendered at 540p as validation renders them, and said so."""
    run = _trained_run(tmp_path, dict(clips=1), train={"max_steps": 2},
                       checkpointing={"every_steps": 2, "keep_last": 1},
                       validation={"sr": "540p", "sr_model": "tiny"})  # fmt: skip

    argv = [str(run), "--checkpoints", "last", "--seeds", "1", "--strengths", "1.0", "--drift-languages", "en",
            "--metric-workers", "0"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["super_resolution"] == {"resolution": "540p", "model": "tiny", "adapter": None}
    width, height = sr_size("16:9", 32, "540p")
    for s in result["samples"]:  # the base and the checkpoint, each at the delivered size
        assert _size(run / "eval" / s["mp4"]) == (width, height)
    assert 'id="super-resolution"' in (run / "eval" / "report.html").read_text()

    assert main([*argv, "--sr", "none"]) == 0  # the first stage only, at the base size
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["super_resolution"] is None
    assert _size(run / "eval" / result["samples"][0]["mp4"]) == (64, 32)


def _size(mp4: Path) -> tuple[int, int]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                          "-of", "csv=p=0", str(mp4)], capture_output=True, text=True, check=True).stdout  # fmt: skip
    width, height = out.strip().split(",")
    return int(width), int(height)


@pytest.mark.slow
def test_an_sr_run_is_judged_on_its_stage_over_one_first_stage_render(tmp_path):
    """A run that trains the 540p SR stage: the first stage renders once, the SR model refines it without adapter
    (the control) and with each checkpoint; no strength to transfer, and the report says how the clips were made."""
    run = _trained_run(tmp_path, dict(clips=2, latent_hw=(4, 6), sr_scale=2), model={"variant": "sr_540p"},
                       data={"sr_crop": [64, 64]}, train={"max_steps": 2},
                       checkpointing={"every_steps": 2, "keep_last": 1})  # fmt: skip

    argv = [str(run), "--first-stage", "tiny", "--checkpoints", "last", "--seeds", "1", "--drift-languages", "en",
            "--metric-workers", "0"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    sr = result["super_resolution"]
    assert sr["trained"] and sr["resolution"] == "540p" and sr["first_stage"] == "tiny"
    assert result["recommended_strength"] is None and "no distilled counterpart" in result["transfer"]["unavailable"]
    width, height = sr_size("16:9", 32, "540p")
    assert {s["variant"] for s in result["samples"]} == {"base", "final"}
    assert all(_size(run / "eval" / s["mp4"]) == (width, height) for s in result["samples"])
    assert result["drift"]["final"]["value"] > 0  # the adapter changes the refined clips of the neutral prompt
    assert "the base column is\nthe SR stage without adapter" in (run / "eval" / "report.html").read_text()


@pytest.mark.slow
def test_a_run_on_a_distilled_checkpoint_reports_without_transfer_and_measures_it_with_the_base(tmp_path):
    """The recipe default: model.checkpoint is the distilled folder. Without --base-checkpoint the report says the
    transfer was not measured (it crashed once); with it the strength is measured against that base."""
    import torch

    from hhtune.model import HappyHorseTransformer, ModelConfig, save_checkpoint

    for name, seed in (("distill", 0), ("base", 1)):
        torch.manual_seed(seed)
        save_checkpoint(HappyHorseTransformer(ModelConfig.preset("tiny")), tmp_path / name)
    run = _trained_run(tmp_path, dict(clips=1), model={"checkpoint": str(tmp_path / "distill"), "variant": "distill"},
                       train={"max_steps": 2}, checkpointing={"every_steps": 2, "keep_last": 1})  # fmt: skip

    argv = [str(run), "--checkpoints", "last", "--seeds", "1", "--strengths", "0.5,1.0", "--drift-languages", "en"]
    assert main(argv) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["recommended_strength"] is None and "--base-checkpoint" in result["transfer"]["unavailable"]
    page = (run / "eval" / "report.html").read_text()
    assert "Transfer not measured: the run trained on the distilled checkpoint" in page

    assert main([*argv, "--base-checkpoint", str(tmp_path / "base")]) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["recommended_strength"] in (0.5, 1.0) and result["transfer"]["no_adapter_gap"] > 0
