"""Every command ends the same way: one exit code per kind of failure and one ``error:`` line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hhtune import cli
from hhtune.cli import MissingDependencyError, run_command
from hhtune.export import AdapterError
from hhtune.recipe import RecipeError
from hhtune.training import RecipeConflict, RunInterrupted, TrainingError
from hhtune.training.resume import ResumeMismatch

# The exit codes are the README's table, written out: a test that compared with the constants would pass if they moved.
FAILED, BAD_INPUT, MISSING_DEPENDENCY, OUT_OF_MEMORY, INTERRUPTED = 1, 2, 3, 4, 130


def _raiser(exc: BaseException):
    def body(argv):
        raise exc

    return body


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RecipeError("recipe.yaml: 1 problem(s)\n  lora.rnak: unknown key; allowed keys here: alpha, rank"), BAD_INPUT),
        (AdapterError("a.safetensors: module 'x' does not exist in this model"), BAD_INPUT),
        (FileNotFoundError(2, "No such file or directory", "missing.yaml"), BAD_INPUT),
        (TrainingError("5 non-finite losses in a row at step 9: lower optimizer.lr"), FAILED),
        (MemoryError(), OUT_OF_MEMORY),
        (MissingDependencyError("espeak-ng is not installed: apt-get install espeak-ng"), MISSING_DEPENDENCY),
        (ModuleNotFoundError("No module named 'av'", name="av"), MISSING_DEPENDENCY),
        (KeyboardInterrupt(), INTERRUPTED),
        (RunInterrupted("stopped by SIGTERM at step 4; re-run the same command to resume"), INTERRUPTED),
        (ResumeMismatch("refusing to resume from runs/x/checkpoints/step-00000002: ..."), BAD_INPUT),
        (RecipeConflict("model.blocks_to_swap does not combine with FSDP2"), BAD_INPUT),
    ],
)
def test_each_kind_of_failure_has_its_code_and_one_error_line(exc, code, capsys):
    assert run_command(_raiser(exc)) == code
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and sum(line.startswith("error:") for line in err) == 1
    assert "Traceback" not in "\n".join(err)  # our failures are messages, not stack traces


def test_the_readme_table_is_the_codes_of_hhtune_cli():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("## When a command fails") :]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert documented == {0, FAILED, BAD_INPUT, MISSING_DEPENDENCY, OUT_OF_MEMORY, INTERRUPTED}
    assert (cli.EXIT_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_MISSING_DEPENDENCY, cli.EXIT_OUT_OF_MEMORY,
            cli.EXIT_INTERRUPTED) == (FAILED, BAD_INPUT, MISSING_DEPENDENCY, OUT_OF_MEMORY, INTERRUPTED)  # fmt: skip


def test_a_sigterm_stop_says_where_it_stopped(capsys):
    interrupted = RunInterrupted("stopped by SIGTERM at step 4; re-run the same command to resume")
    assert run_command(_raiser(interrupted)) == 130
    assert capsys.readouterr().err == "error: stopped by SIGTERM at step 4; re-run the same command to resume\n"


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

    assert run_command(_raiser(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))) == OUT_OF_MEMORY
    assert "python -m hhtune.plan" in capsys.readouterr().err


def test_a_library_bug_keeps_its_traceback(capsys):
    assert run_command(_raiser(ValueError("operands could not be broadcast"))) == FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: operands could not be broadcast"


def test_a_plain_value_error_from_our_own_checks_is_bad_input(capsys):
    from hhtune.sampling.generate import latent_shapes

    assert run_command(lambda _argv: latent_shapes(1.0, "21:9")) == BAD_INPUT
    assert capsys.readouterr().err.startswith("error: unknown aspect '21:9'")


def test_success_and_argparse_exits_pass_through():
    from hhtune.plan.__main__ import main as plan_main

    assert run_command(lambda _argv: None) == 0
    assert run_command(lambda _argv: 0) == 0
    with pytest.raises(SystemExit) as e:
        run_command(_raiser(SystemExit(7)))
    assert e.value.code == 7  # passed through unchanged
    with pytest.raises(SystemExit) as e:
        plan_main(["r.yaml", "--no-such-option"])
    assert e.value.code == BAD_INPUT  # argparse's usage error is bad input too


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _bad_input(command: str, tmp_path: Path) -> list[str]:
    """A typical mistake for each entry point; each command is imported only when its case runs."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: tiny}\ndata: {dataset: ds}\nlora: {rnak: 4}\n")
    data_cfg = tmp_path / "data.yaml"
    data_cfg.write_text("min_seconds: -1\n")
    return {
        "train": [str(recipe)],
        "plan": [str(recipe)],
        "export": [str(tmp_path / "missing"), "--format", "comfyui", "--out", str(tmp_path / "o")],
        "sample": ["--model", "15b", "--encoders", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "s")],
        "data_prep": ["prepare", str(tmp_path), "--out", str(tmp_path / "d"), "--config", str(data_cfg)],
    }[command]


@pytest.mark.parametrize(("command", "entry", "named"), [
    ("train", "hhtune.train", "lora.rnak"),
    ("plan", "hhtune.plan.__main__", "lora.rnak"),
    ("export", "hhtune.export.__main__", "missing"),
    ("sample", "hhtune.sample", "--random-weights"),
    ("data_prep", "data_prep.__main__", "min_seconds"),
])  # fmt: skip
def test_every_command_refuses_bad_input_with_code_2_and_one_error_line(command, entry, named, tmp_path, capsys):
    """The five entry points, each given a typical mistake, end the same way."""
    import importlib

    main = importlib.import_module(entry).main
    assert main(_bad_input(command, tmp_path)) == BAD_INPUT
    err = capsys.readouterr().err
    _one_error_line(err)
    assert named in err, err


@pytest.mark.slow  # two launches of the training command, ~10 s each on a loaded 2-core machine
def test_training_exit_codes_under_python_and_under_accelerate_launch_as_the_readme_says(tmp_path):
    """`python -m hhtune.train` keeps the codes; `accelerate launch --quiet` reports any failure as 1, after the one
    line."""
    import os
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model: {preset: tiny}\ndata: {dataset: ds}\nlora: {rnak: 4}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    launches = {
        BAD_INPUT: [sys.executable, "-m", "hhtune.train", str(recipe)],
        FAILED: [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
                 "accelerate_configs/cpu.yaml", "hhtune/train.py", str(recipe)],
    }  # fmt: skip
    for code, cmd in launches.items():
        result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == code, (cmd, result.stderr[-2000:])
        _one_error_line(result.stderr)
        assert "lora.rnak: unknown key" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
