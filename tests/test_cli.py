"""Every command ends the same way: one exit code per kind of failure and one ``error:`` line."""

from __future__ import annotations

import pytest

from hhtune.cli import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_MISSING_DEPENDENCY, EXIT_OUT_OF_MEMORY,
                        MissingDependencyError, run_command)  # fmt: skip
from hhtune.export import AdapterError
from hhtune.recipe import RecipeError
from hhtune.training import TrainingError


def _raiser(exc: BaseException):
    def body(argv):
        raise exc

    return body


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RecipeError("recipe.yaml: 1 problem(s)\n  lora.rnak: unknown key; allowed keys here: alpha, rank"), EXIT_BAD_INPUT),
        (AdapterError("a.safetensors: module 'x' does not exist in this model"), EXIT_BAD_INPUT),
        (FileNotFoundError(2, "No such file or directory", "missing.yaml"), EXIT_BAD_INPUT),
        (TrainingError("5 non-finite losses in a row at step 9: lower optimizer.lr"), EXIT_FAILED),
        (MemoryError(), EXIT_OUT_OF_MEMORY),
        (MissingDependencyError("espeak-ng is not installed: apt-get install espeak-ng"), EXIT_MISSING_DEPENDENCY),
        (ModuleNotFoundError("No module named 'av'", name="av"), EXIT_MISSING_DEPENDENCY),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
    ],
)
def test_each_kind_of_failure_has_its_code_and_one_error_line(exc, code, capsys):
    assert run_command(_raiser(exc)) == code
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and sum(line.startswith("error:") for line in err) == 1
    assert "Traceback" not in "\n".join(err)  # our failures are messages, not stack traces


def test_details_are_indented_under_the_error_line(capsys):
    run_command(_raiser(RecipeError("r.yaml: 2 problem(s)\n  a.b: unknown key\n  c.d: required but missing")))
    assert capsys.readouterr().err.splitlines() == [
        "error: r.yaml: 2 problem(s)", "  a.b: unknown key", "  c.d: required but missing"]  # fmt: skip


def test_missing_file_names_the_file(capsys):
    run_command(_raiser(FileNotFoundError(2, "No such file or directory", "runs/x/recipe.yaml")))
    assert "runs/x/recipe.yaml" in capsys.readouterr().err


def test_out_of_memory_points_at_the_plan(capsys):
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name, without needing CUDA
        pass

    assert run_command(_raiser(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))) == EXIT_OUT_OF_MEMORY
    assert "python -m hhtune.plan" in capsys.readouterr().err


def test_a_library_bug_keeps_its_traceback(capsys):
    assert run_command(_raiser(ValueError("operands could not be broadcast"))) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: operands could not be broadcast"


def test_a_plain_value_error_from_our_own_checks_is_bad_input(capsys):
    from hhtune.sampling.generate import latent_shapes

    assert run_command(lambda argv: latent_shapes(1.0, "21:9")) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: unknown aspect '21:9'")


def test_success_and_argparse_exits_pass_through():
    assert run_command(lambda argv: None) == 0
    assert run_command(lambda argv: 0) == 0
    with pytest.raises(SystemExit):
        run_command(_raiser(SystemExit(2)))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_every_command_refuses_bad_input_with_code_2_and_one_error_line(tmp_path, capsys):
    """The five entry points, each given a typical mistake, end the same way."""
    from data_prep.__main__ import main as data_prep_main
    from hhtune.export.__main__ import main as export_main
    from hhtune.plan.__main__ import main as plan_main
    from hhtune.sample import main as sample_main
    from hhtune.train import main as train_main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: tiny}\ndata: {dataset: ds}\nlora: {rnak: 4}\n")
    data_cfg = tmp_path / "data.yaml"
    data_cfg.write_text("min_seconds: -1\n")
    cases = {
        "train": (lambda: train_main([str(recipe)]), "lora.rnak"),
        "plan": (lambda: plan_main([str(recipe)]), "lora.rnak"),
        "export": (lambda: export_main([str(tmp_path / "missing"), "--format", "comfyui", "--out", str(tmp_path / "o")]),
                   "missing"),
        "sample": (lambda: sample_main(["--model", "15b", "--encoders", str(tmp_path), "--prompt", "x",
                                        "--out", str(tmp_path / "s")]), "--random-weights"),
        "data_prep": (lambda: data_prep_main(["prepare", str(tmp_path), "--out", str(tmp_path / "d"),
                                              "--config", str(data_cfg)]), "min_seconds"),
    }  # fmt: skip
    for name, (run, named) in cases.items():
        assert run() == EXIT_BAD_INPUT, name
        err = capsys.readouterr().err
        _one_error_line(err)
        assert named in err, (name, err)
