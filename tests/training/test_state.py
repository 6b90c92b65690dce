"""Checkpoint files: nothing is unpickled on load, and a resume refuses a changed run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hhtune.recipe import validate_recipe
from hhtune.training import CheckpointLoadError, RecipeConflict, TrainingError, train
from hhtune.training.resume import ResumeMismatch, check_resume, run_fingerprint
from hhtune.training.state import Progress, Snapshot, latest_checkpoint, load_state, save_state
from hhtune.training.synthetic import write_synthetic_dataset


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious shared run folder would ship)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _snapshot(step: int = 3) -> Snapshot:
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    return Snapshot(Progress(step=step), {"a.lora_A.weight": torch.ones(2, 2)}, opt.state_dict(), sched.state_dict(),
                    {"lora.rank": 4})  # fmt: skip


def test_checkpoint_round_trips_with_weights_only_loads(tmp_path):
    import random

    import numpy as np

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_state(tmp_path, _snapshot(), keep_last=2)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    snap = load_state(path)  # restores the RNG streams saved above
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert snap.progress.step == 3 and snap.fingerprint == {"lora.rank": 4}
    assert torch.equal(snap.adapter["a.lora_A.weight"], torch.ones(2, 2))
    assert snap.optimizer["state"][0]["step"] == 1 and snap.scheduler["last_epoch"] == 0


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_a_pickle_with_a_payload_is_refused(tmp_path, victim):
    path = save_state(tmp_path, _snapshot(), keep_last=2)
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker)}, path / victim)
    with pytest.raises(CheckpointLoadError, match=f"{victim} holds more than tensors.*delete this checkpoint folder"):
        load_state(path)
    assert not marker.exists(), "the payload ran"


def test_killed_saves_leave_no_checkpoint_and_are_cleaned_up(tmp_path):
    class BoomError(Exception):
        pass

    def die_after_optimizer(p: Path) -> None:
        if p.name == "optimizer.pt":
            raise BoomError

    save_state(tmp_path, _snapshot(1), keep_last=3)
    with pytest.raises(BoomError):
        save_state(tmp_path, _snapshot(2), keep_last=3, on_file=die_after_optimizer)
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def _recipe(dataset: Path, out: Path, **sections) -> dict:
    base = {
        "model": {"preset": "tiny", "gradient_checkpointing": False, "block_dtype": "fp32"},
        "lora": {"rank": 2},
        "data": {"dataset": str(dataset)},
        "train": {"max_steps": 2, "output_dir": str(out), "mixed_precision": "no"},
        "checkpointing": {"every_steps": 2},
        "logging": {"wandb_mode": "disabled"},
        "export": {"formats": []},
        "validation": {"at_end": False},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return base


def test_fingerprint_ignores_free_keys_and_names_changes():
    a = validate_recipe(_recipe(Path("d"), Path("o")))
    b = validate_recipe(_recipe(Path("d"), Path("elsewhere"), train={"max_steps": 50}, logging={"every_steps": 5},
                                checkpointing={"every_steps": 7, "keep_last": 9}, export={"formats": ["peft"]},
                                validation={"prompts": ["x"]}))  # fmt: skip
    assert run_fingerprint(a, 1, "f") == run_fingerprint(b, 1, "f")
    c = validate_recipe(_recipe(Path("d"), Path("o"), train={"gradient_accumulation_steps": 2}, lora={"alpha": 4.0}))
    with pytest.raises(ResumeMismatch) as e:
        check_resume(run_fingerprint(a, 1, "f"), run_fingerprint(c, 2, "g"), [], "ckpt")
    msg = str(e.value)
    for line in ("train.gradient_accumulation_steps: 1 -> 2", "lora.alpha: null -> 4.0", "world_size: 1 -> 2",
                 'dataset.fingerprint: "f" -> "g"', "checkpointing.allow_changed"):  # fmt: skip
        assert line in msg, line
    allowed = check_resume(run_fingerprint(a, 1, "f"), run_fingerprint(c, 2, "g"),
                           ["train.gradient_accumulation_steps", "lora", "world_size", "dataset.fingerprint"],
                           "ckpt")  # fmt: skip
    assert len(allowed) == 4
    with pytest.raises(ResumeMismatch, match=r"names \['lora.rnak'\], which are not fingerprinted keys"):
        check_resume({}, {}, ["lora.rnak"], "ckpt")


def test_resume_with_changed_settings_is_refused_unless_allowed(tmp_path):
    data = write_synthetic_dataset(tmp_path / "ds", clips=2)
    first = _recipe(data, tmp_path / "run")
    train(validate_recipe(first), log=lambda *_: None)
    changed = _recipe(data, tmp_path / "run", train={"max_steps": 3, "gradient_accumulation_steps": 2},
                      optimizer={"lr": 5e-4})  # fmt: skip
    with pytest.raises(ResumeMismatch, match=r"refusing to resume from .*step-00000002.*"
                                            r"\n.*optimizer.lr: 0.0001 -> 0.0005"
                                            r"\n.*train.gradient_accumulation_steps: 1 -> 2"):  # fmt: skip
        train(validate_recipe(changed), log=lambda *_: None)
    logs: list[str] = []
    allowed = _recipe(data, tmp_path / "run", train={"max_steps": 3}, optimizer={"lr": 5e-4},
                      checkpointing={"allow_changed": ["optimizer.lr"]})  # fmt: skip
    train(validate_recipe(allowed), log=logs.append)
    assert any("deliberate change" in ln and "optimizer.lr: 0.0001 -> 0.0005" in ln for ln in logs), logs
    # checkpoint 3 records the new lr; from there only free keys change: no allow_changed needed
    longer = _recipe(data, tmp_path / "run", train={"max_steps": 4}, optimizer={"lr": 5e-4}, logging={"every_steps": 2})
    train(validate_recipe(longer), log=logs.append)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000004"


def test_missing_validation_or_export_dependency_stops_the_run_before_the_model_loads(tmp_path, monkeypatch):
    import sys

    from hhtune.training import trainer

    data = write_synthetic_dataset(tmp_path / "ds", clips=1)
    monkeypatch.setattr(trainer, "build_model", lambda *_a, **_k: pytest.fail("the model loaded before the check"))
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if not installed: importing it raises ImportError
    with_validation = _recipe(data, tmp_path / "run", validation={"prompts": ["a red ball"], "at_end": True})
    with pytest.raises(TrainingError, match="validation needs the Python package 'soundfile'"):
        train(validate_recipe(with_validation), log=lambda *_: None)
    monkeypatch.delitem(sys.modules, "soundfile")
    merged = _recipe(data, tmp_path / "run2", export={"formats": ["peft", "merged_single"]})
    with pytest.raises(RecipeConflict, match=r"export.formats \['merged_single'\] merge into a base checkpoint"):
        train(validate_recipe(merged), log=lambda *_: None)


def test_a_setting_added_by_a_later_hhtune_resumes_at_its_default_only():
    a = validate_recipe(_recipe(Path("d"), Path("o")))
    stored = {k: v for k, v in run_fingerprint(a, 1, "f").items() if k not in ("data.sr_crop", "loss.balance")}
    assert check_resume(stored, run_fingerprint(a, 1, "f"), [], "ckpt") == []  # both absent before, both default
    b = validate_recipe(_recipe(Path("d"), Path("o"), loss={"balance": "ema"}))
    with pytest.raises(ResumeMismatch, match=r'loss.balance: "<absent>" -> "ema"'):
        check_resume(stored, run_fingerprint(b, 1, "f"), [], "ckpt")
