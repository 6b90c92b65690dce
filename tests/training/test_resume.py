"""Resuming: a change that cannot be resumed is refused with the alternative, never offered and never a crash."""

from __future__ import annotations

import json

import pytest
import yaml
from _runs import _recipe

from hhtune.cli import exit_code
from hhtune.recipe import validate_recipe
from hhtune.training import train
from hhtune.training.resume import SHAPE_KEYS, ResumeMismatch, check_resume, run_fingerprint
from hhtune.training.synthetic import write_synthetic_dataset

_QUIET = {"validation": {"at_end": False}, "export": {"formats": []}}


def _fingerprint(**sections) -> dict:
    return run_fingerprint(validate_recipe(_recipe("d", "o", **sections)), 1, "f")


@pytest.mark.parametrize(("section", "value"), [
    ("lora", {"rank": 8}), ("lora", {"targets": ["linear_qkv"]}), ("lora", {"layers": "all"}),
    ("lora", {"experts": ["video"]}), ("lora", {"embedders": ["audio"]}), ("lora", {"use_dora": True}),
    ("model", {"preset": "mid"}),
])  # fmt: skip
def test_a_change_of_the_adapter_tensors_is_never_offered_and_never_accepted(section, value):
    old, new = _fingerprint(), _fingerprint(**{section: value})
    key = f"{section}.{next(iter(value))}"
    assert any(key == k or key.startswith(k + ".") for k in SHAPE_KEYS)
    with pytest.raises(ResumeMismatch) as refused:
        check_resume(old, new, [], "ckpt")
    assert f"allow_changed=[{key}]" not in str(refused.value)  # the tool must not suggest what it cannot do
    for allowed in ([key], [section]):  # named, or covered by its section
        with pytest.raises(ResumeMismatch,
                           match=r"(?s)other tensors.*allow_changed cannot accept.*another train.output_dir"):
            check_resume(old, new, allowed, "ckpt")


def test_a_resumable_change_is_still_offered_beside_the_refusal_of_others():
    old = _fingerprint()
    with pytest.raises(ResumeMismatch, match=r"allow_changed=\[lora.alpha\]"):
        check_resume(old, _fingerprint(lora={"alpha": 8.0}), [], "ckpt")
    assert check_resume(old, _fingerprint(lora={"alpha": 8.0}), ["lora"], "ckpt") == ["lora.alpha: null -> 8.0"]


def test_following_the_refusal_of_a_rank_change_is_bad_input_not_a_size_mismatch_crash(tmp_path):
    data = write_synthetic_dataset(tmp_path / "ds", clips=1)
    first = _recipe(data, tmp_path / "run", train={"max_steps": 2}, checkpointing={"every_steps": 2}, **_QUIET)
    train(validate_recipe(first), log=lambda *_: None)
    for allow in ([], ["lora.rank"]):  # the change as made, then as the old message advised
        bigger = _recipe(data, tmp_path / "run", train={"max_steps": 3}, lora={"rank": 8},
                         checkpointing={"every_steps": 2, "allow_changed": allow}, **_QUIET)  # fmt: skip
        with pytest.raises(ResumeMismatch, match=r"lora.rank: 4 -> 8") as refused:
            train(validate_recipe(bigger), log=lambda *_: None)
        assert exit_code(refused.value) == 2
        assert "python -m hhtune.export " in str(refused.value)


def _files(run) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_finished_run_run_again_changes_no_file_unless_forced(tmp_path, capsys):
    from hhtune.train import main

    data = write_synthetic_dataset(tmp_path / "ds", clips=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(data, tmp_path / "run", train={"max_steps": 3},
                                             checkpointing={"every_steps": 2},
                                             validation={"at_end": False})))  # fmt: skip
    run = tmp_path / "run"
    assert main([str(recipe)]) == 0
    before = _files(run)
    assert "export/peft/adapter_model.safetensors" in before and "run_info.json" in before
    capsys.readouterr()
    assert main([str(recipe)]) == 0
    assert _files(run) == before  # no checkpoint, recipe.yaml, metrics row, adapter or export rewritten
    out = capsys.readouterr().out
    assert "is finished: 3 steps" in out and "nothing to do" in out and "loss" not in out, out
    assert main([str(recipe), "--force-export"]) == 0
    after = _files(run)
    assert after["export/peft/adapter_model.safetensors"][1] > before["export/peft/adapter_model.safetensors"][1]
    assert {k for k in after if k.startswith("checkpoints/")} == {k for k in before if k.startswith("checkpoints/")}
    assert [k for k in before if k.startswith("checkpoints/") and after[k] != before[k]] == []
    assert after["metrics.jsonl"][0] == before["metrics.jsonl"][0]  # no duplicate row
    # one more step is not finished: it trains on from the last checkpoint
    assert main([str(recipe), "train.max_steps=4"]) == 0
    assert json.loads((run / "run_info.json").read_text())["steps"] == 4
