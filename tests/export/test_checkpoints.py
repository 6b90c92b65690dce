"""Any checkpoint of a run is an adapter: hhtune.export and hhtune.sample take RUN/checkpoints/step-N and RUN --step N."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hhtune import adapters
from hhtune.adapters.formats.read import read_adapter
from hhtune.export.__main__ import main as export_main
from hhtune.recipe import validate_recipe
from hhtune.training import train
from hhtune.training.synthetic import write_synthetic_dataset

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from _runs import _recipe  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_synthetic_dataset(tmp / "ds", clips=1)
    recipe = _recipe(data, tmp / "run", train={"max_steps": 4}, checkpointing={"every_steps": 2, "keep_last": 5},
                     validation={"at_end": False})  # fmt: skip
    return train(validate_recipe(recipe), log=lambda *_: None)


def _b(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if k.endswith("lora_B.weight")}


def test_an_intermediate_checkpoint_exports_by_folder_and_by_step(run, tmp_path, capsys):
    step2 = run / "checkpoints" / "step-00000002"
    assert export_main([str(step2), "--format", "comfyui", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert export_main([str(run), "--step", "2", "--format", "comfyui", "--out", str(tmp_path / "b.safetensors")]) == 0
    assert export_main([str(run), "--format", "comfyui", "--out", str(tmp_path / "final.safetensors")]) == 0
    a, b, final = (_b(tmp_path / f"{n}.safetensors") for n in ("a", "b", "final"))
    assert a.keys() == final.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same checkpoint either way
    assert any(not torch.equal(a[k], final[k]) for k in a)  # and not the final adapter
    w = read_adapter(step2)
    assert w.metadata.training_steps == 2


def test_a_step_the_run_does_not_have_is_bad_input_naming_the_steps_it_has(run, tmp_path, capsys):
    assert export_main([str(run), "--step", "3", "--format", "comfyui", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no checkpoint at step 3; it has steps [2, 4]" in err, err
    assert export_main([str(run / "adapter"), "--step", "2", "--format", "peft", "--out", str(tmp_path / "y")]) == 2
    assert "not a training run folder" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["folder", "step"])
def test_sample_takes_a_checkpoint_as_adapter(run, tmp_path, monkeypatch, how):
    from hhtune.encoders import build_tiny_encoders
    from hhtune.sample import main as sample_main

    build_tiny_encoders(tmp_path / "enc")
    loaded, real = [], adapters.load

    def spy(path, model, **kwargs):
        loaded.append((path, real(path, model, **kwargs)))  # the checkpoint really loads onto the model
        raise SystemExit(0)  # stop before sampling: the adapter is what is tested here

    monkeypatch.setattr(adapters, "load", spy)
    step2 = run / "checkpoints" / "step-00000002"
    chosen = [str(step2)] if how == "folder" else [str(run), "--step", "2"]
    with pytest.raises(SystemExit):
        sample_main(["--model", "tiny", "--random-weights", "--encoders", str(tmp_path / "enc"), "--prompt", "x",
                     "--out", str(tmp_path / "o"), "--device", "cpu", "--adapter", *chosen])  # fmt: skip
    assert Path(loaded[0][0]) == step2
