"""Any checkpoint of a run is an adapter: hhtune.export and hhtune.sample take RUN/checkpoints/step-N and
RUN --step N."""

from __future__ import annotations

import sys
import warnings
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
from _runs import _recipe


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


# --------------------------------------------------------------------------- one base check everywhere


def _other_base():
    from hhtune.model import HappyHorseTransformer, ModelConfig

    torch.manual_seed(7)  # the run's base is the tiny preset from seed 0
    return HappyHorseTransformer(ModelConfig.preset("tiny"))


@pytest.mark.parametrize("where", ["run", "adapter", "checkpoint"])
def test_a_run_adapter_on_another_base_is_refused_naming_both_fingerprints_however_it_is_named(run, where):
    import json

    from hhtune.adapters import AdapterError
    from hhtune.adapters.base_identity import base_model_id

    path = {"run": run, "adapter": run / "adapter", "checkpoint": run / "checkpoints" / "step-00000002"}[where]
    recorded = json.loads((run / "run_info.json").read_text())["base_fingerprint"]
    other = _other_base()
    with pytest.raises(AdapterError, match=rf"fingerprint {recorded}; this base has {base_model_id(other)}"):
        adapters.load(path, other)
    expected = rf"fingerprint {recorded}; this base has {base_model_id(other)}.*applied anyway"
    with pytest.warns(UserWarning, match=expected):
        adapters.load(path, _other_base(), check_base="warn")
    # check_base=False: a deliberate transfer (evaluation's), neither refused nor warned
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*another base")
        adapters.load(path, _other_base(), check_base=False)


def test_export_into_another_base_is_refused_like_sampling(run, tmp_path, capsys):
    from hhtune.model import save_checkpoint

    save_checkpoint(_other_base(), tmp_path / "other")
    argv = [str(run), "--format", "merged_single", "--base", str(tmp_path / "other"), "--out", str(tmp_path / "m")]
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "was trained on another base model" in err, err
    assert not (tmp_path / "m").exists()


def test_sample_with_random_weights_checks_the_base_too(run, tmp_path, capsys, monkeypatch):
    """`--random-weights` builds the tiny preset from seed 0; an adapter of a seed-3 run is refused, or warned with
    the flag."""
    from hhtune.encoders import build_tiny_encoders
    from hhtune.sample import main as sample_main

    data = write_synthetic_dataset(tmp_path / "ds", clips=1)
    other = train(validate_recipe(_recipe(data, tmp_path / "run3", model={"init_seed": 3}, train={"max_steps": 1},
                                          checkpointing={"every_steps": 1}, validation={"at_end": False})),
                  log=lambda *_: None)  # fmt: skip
    build_tiny_encoders(tmp_path / "enc")
    argv = ["--model", "tiny", "--random-weights", "--encoders", str(tmp_path / "enc"), "--prompt", "x",
            "--out", str(tmp_path / "o"), "--device", "cpu", "--adapter", str(other)]  # fmt: skip
    assert sample_main(argv) == 2
    assert "was trained on another base model" in capsys.readouterr().err
    real = adapters.load

    def load_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise SystemExit(0)  # stop before sampling: the base check is what is tested here

    monkeypatch.setattr(adapters, "load", load_then_stop)
    with pytest.warns(UserWarning, match="applied anyway"), pytest.raises(SystemExit):
        sample_main([*argv, "--ignore-base-mismatch"])
