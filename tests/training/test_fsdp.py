"""Several CPU processes: the launch configs really start them, and FSDP2 trains, resumes, validates and exports.

Each test launches real processes over gloo through the shipped accelerate configs, exactly
as the README tells users to.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _runs import ROOT, _assert_same_adapter, _metric_steps, _recipe, _run_cli, free_port
from safetensors.torch import load_file

from hhtune.encoders import build_tiny_encoders
from hhtune.training.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow  # every test launches several training processes


def _launch(config: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "accelerate_configs" / config),
            "--main_process_port", str(free_port())]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", clips=4, buckets=2, with_reference=True)


def test_cpu_config_starts_one_process_and_cpu_multi_starts_two(dataset, tmp_path):
    recipe = _recipe(dataset, tmp_path / "one", train={"max_steps": 1})
    one = _run_cli(recipe, tmp_path, launcher=[*_launch("cpu.yaml"), "--num_processes", "2"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert "processes: 1 " in one.stdout  # the CPU launcher ignores --num_processes: hence cpu_multi.yaml
    recipe = _recipe(dataset, tmp_path / "two", train={"max_steps": 1})
    two = _run_cli(recipe, tmp_path, launcher=_launch("cpu_multi.yaml"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "processes: 2 " in two.stdout


def test_fsdp2_two_processes_with_kill_and_resume_equal_one_process(dataset, tmp_path):
    """FSDP2 over 2 gloo processes, killed at step 5 and resumed from checkpoint 4, equals 1 process with 2x
    accumulation.

    The run also validates (every process takes part in the sharded forward passes, the main one
    writes the clip) and exports, which needs the adapter gathered from the shards.
    """
    encoders = build_tiny_encoders(tmp_path / "enc")
    common = dict(checkpointing={"every_steps": 2, "keep_last": 5}, export={"formats": ["peft", "comfyui"]})
    one = _recipe(dataset, tmp_path / "one", train={"max_steps": 6, "gradient_accumulation_steps": 2}, **common)
    r1 = _run_cli(one, tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]

    validation = {"prompts": ["synthetic clip 1", "a red ball"], "at_end": True, "seconds": 0.5, "base_resolution": 32,
                  "encoders": str(Path(encoders.video_vae).parent)}  # fmt: skip
    two = _recipe(dataset, tmp_path / "two", train={"max_steps": 6}, validation=validation, **common)
    killed = _run_cli(two, tmp_path, launcher=_launch("cpu_fsdp2.yaml"), fault="kill@step:5")
    assert killed.returncode == 1, killed.stderr[-3000:]  # the launcher reports the killed worker as a failed run
    assert "FSDP2" in killed.stdout and "processes: 2 " in killed.stdout, killed.stdout[-2000:] + killed.stderr[-3000:]
    ckpt = tmp_path / "two" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000002", "step-00000004"]
    # the checkpoint holds the whole adapter, gathered from both shards, equal to the one-process run's
    full = load_file(ckpt / "step-00000004" / "adapter.safetensors")
    same_step = load_file(tmp_path / "one" / "checkpoints" / "step-00000004" / "adapter.safetensors")
    assert full.keys() == same_step.keys()
    for k in full:
        torch.testing.assert_close(full[k], same_step[k], rtol=0, atol=1e-6, msg=k)

    resumed = _run_cli(two, tmp_path, launcher=_launch("cpu_fsdp2.yaml"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "(step 4)" in resumed.stdout
    _assert_same_adapter(tmp_path / "one", tmp_path / "two", atol=1e-6)
    assert _metric_steps(tmp_path / "two") == list(range(1, 7))
    a = load_file(tmp_path / "one" / "export" / "comfyui" / "adapter_comfyui.safetensors")
    b = load_file(tmp_path / "two" / "export" / "comfyui" / "adapter_comfyui.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=1e-2, msg=k)  # bf16 files
    samples = tmp_path / "two" / "samples" / "step-00000006"
    assert (samples / "prompt00.mp4").is_file() and (samples / "prompt01.mp4").is_file()
