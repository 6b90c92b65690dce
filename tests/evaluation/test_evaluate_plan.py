"""What an evaluation samples, checkpoints read as adapters, and one clear error line for each bad request."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from adapter_helpers import trained

from hhtune.adapters.formats.checkpoint import adapter_from_checkpoint
from hhtune.adapters.formats.peft import from_peft_model, write_peft
from hhtune.adapters.formats.read import read_adapter
from hhtune.evaluate import main
from hhtune.evaluation.drift_prompts import drift_prompts
from hhtune.evaluation.plan import EvaluationError, choose_checkpoints, read_prompts
from hhtune.training.synthetic import write_synthetic_dataset


def _checkpoint(run: Path, step: int, model) -> Path:
    path = run / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, path / "adapter.safetensors")
    (path / "fingerprint.json").write_text(json.dumps({"lora.rank": 4, "lora.alpha": 8.0, "lora.use_rslora": False}))
    (path / "state.json").write_text(json.dumps({"step": step}))
    return path


def _run(tmp_path: Path, *, prompts=("hello",), checkpoint: bool = True, variant: str = "distill") -> Path:
    run = tmp_path / "run"
    run.mkdir()
    dataset = write_synthetic_dataset(tmp_path / "ds", clips=1)
    recipe = {"model": {"preset": "tiny", "variant": variant}, "lora": {"rank": 4, "alpha": 8.0},
              "data": {"dataset": str(dataset)},
              "validation": {"prompts": list(prompts), "encoders": str(tmp_path / "no-encoders")}}  # fmt: skip
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    if checkpoint:
        _checkpoint(run, 2, trained())
    return run


def test_a_training_checkpoint_reads_as_the_adapter_it_holds(tmp_path):
    model = trained()
    path = _checkpoint(tmp_path, 5, model)
    from_ckpt, want = adapter_from_checkpoint(path), from_peft_model(model)
    assert read_adapter(path).modules.keys() == want.modules.keys()  # read_adapter (load, export, sample) accepts it
    assert from_ckpt.metadata.training_steps == 5
    for p in want.modules:
        torch.testing.assert_close(from_ckpt.delta(p), want.delta(p), rtol=0, atol=0)  # rank and alpha from the run


def test_choose_checkpoints_by_spec(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4):
        _checkpoint(run, step, trained())
    assert [c.step for c in choose_checkpoints(run, "all")] == [2, 4]
    assert [c.label for c in choose_checkpoints(run, "last")] == ["step-00000004"]
    assert [c.step for c in choose_checkpoints(run, "4,2")] == [2, 4]
    with pytest.raises(EvaluationError, match=r"no checkpoint at step \[3\]"):
        choose_checkpoints(run, "3")


def test_prompt_files_and_drift_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# brand prompts\n\nfirst <a presenter, German>\n  second  \n")
    assert read_prompts(f) == ["first <a presenter, German>", "second"]
    assert len(drift_prompts()) == 7 and len(set(drift_prompts())) == 7


@pytest.mark.parametrize("case", ["no checkpoints", "empty prompt file", "adapter for another model",
                                  "an SR run without its first stage", "--sr without its model",
                                  "--sr-model without --sr", "--sr for an SR run",
                                  "--first-stage for a first-stage run", "--first-stage-adapter alone"])  # fmt: skip
def test_bad_input_gives_one_error_line(tmp_path, capsys, case):
    sr_run = case in ("an SR run without its first stage", "--sr for an SR run")
    run = _run(tmp_path, checkpoint=case != "no checkpoints", variant="sr_540p" if sr_run else "distill")
    argv = [str(run), *{"--sr without its model": ["--sr", "1080p"],
                        "--sr-model without --sr": ["--sr-model", "/models/540p_sr"],
                        "--sr for an SR run": ["--sr", "540p", "--sr-model", "tiny", "--first-stage", "tiny"],
                        "--first-stage for a first-stage run": ["--first-stage", "/models/distill"],
                        "--first-stage-adapter alone": ["--first-stage-adapter", "x.safetensors"]}.get(case, [])]
    if case == "empty prompt file":
        (tmp_path / "empty.txt").write_text("# nothing here\n\n")
        argv += ["--prompts", str(tmp_path / "empty.txt")]
    if case == "adapter for another model":
        w = from_peft_model(trained())
        w.metadata.base_fingerprint = "0123456789abcdef"
        write_peft(w, run / "adapter", torch.float32)
        (run / "run_info.json").write_text(json.dumps({"steps": 9}))
        argv += ["--checkpoints", "last"]
    capsys.readouterr()  # the dataset writer's progress bars
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    want = {"no checkpoints": "holds no checkpoints", "empty prompt file": "holds no prompts",
            "adapter for another model": "trained on another base model",
            "an SR run without its first stage": "trains the sr_540p stage: pass --first-stage, the first-stage",
            "--sr for an SR run": "--sr is for first-stage runs",
            "--first-stage for a first-stage run": "--first-stage is for runs that train an SR stage",
            "--first-stage-adapter alone": "--first-stage-adapter needs --first-stage",
            "--sr without its model": "--sr 1080p needs --sr-model",
            "--sr-model without --sr": "--sr-model and --sr-adapter need --sr 540p or --sr 1080p"}[case]  # fmt: skip
    assert want in err[0]
