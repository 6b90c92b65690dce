"""The README's main command, end to end on the CPU: build the sample dataset, then train through accelerate.

The commands are read from the Makefile's ``quickstart`` target, so this test runs
exactly what a new user runs (in a scratch folder, with this test's interpreter).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def _quickstart_commands() -> list[list[str]]:
    lines, inside = [], False
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("quickstart:"):
            inside = True
            continue
        if inside:
            if not line.startswith("\t"):
                break
            lines.append(line.strip())
    bindir = str(Path(sys.executable).parent)
    return [shlex.split(line.replace("$(BIN)", bindir)) for line in lines]


# Each command gets COMMAND_TIMEOUT_S; the test's own pytest-timeout covers both with room to spare, so a slow
# machine fails with the command's output rather than pytest killing the test mid-command.
COMMAND_TIMEOUT_S = 600


@pytest.mark.slow  # the README's two commands, minutes on a CPU
@pytest.mark.timeout(2 * COMMAND_TIMEOUT_S + 120)
def test_readme_quickstart_runs_end_to_end(tmp_path):
    for folder in ("recipes", "accelerate_configs", "data_prep/sample_footage"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "hhtune").mkdir()
    shutil.copy(ROOT / "hhtune" / "train.py", tmp_path / "hhtune" / "train.py")
    recipe = yaml.safe_load((tmp_path / "recipes" / "quickstart.yaml").read_text())
    recipe["train"]["max_steps"] = 40  # the shipped 300 steps take a minute; the path is the same
    recipe["checkpointing"]["every_steps"] = 20
    (tmp_path / "recipes" / "quickstart.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    commands = _quickstart_commands()
    assert [c[1:4] for c in commands] == [["-m", "data_prep", "build"],
                                          ["launch", "--config_file", "accelerate_configs/cpu.yaml"]]
    for cmd in commands:
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    run = tmp_path / "runs" / "quickstart" / "train"
    info = json.loads((run / "run_info.json").read_text())
    assert info["steps"] == 40 and info["dataset_summary"]["clips"] >= 7
    assert set(info["languages"]) == {"en", "zh", "yue", "ja", "ko", "de", "fr"}
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "loss_curve.png").is_file()
    assert list((run / "wandb").glob("offline-run-*"))
    records = [r for ln in (run / "metrics.jsonl").read_text().splitlines() if "loss" in (r := json.loads(ln))]
    # lip-sync at the mouth: the tiny random model draws no face, so its frames without one are what is logged
    assert len(records) == 40 and any("val/lip_sync_frames_without_face" in ln
                                      for ln in (run / "metrics.jsonl").read_text().splitlines())
    val = [r for ln in (run / "metrics.jsonl").read_text().splitlines()
           if "val/nearest_clip_distance" in (r := json.loads(ln))]
    assert val and 0 < val[-1]["val/nearest_clip_distance"] < 10  # every validation says how close it is to the clips
    first, last = sum(r["loss"] for r in records[:10]) / 10, sum(r["loss"] for r in records[-10:]) / 10
    assert last < first  # it learns something even in 40 steps
    assert (tmp_path / "runs" / "quickstart" / "dataset" / "report.html").is_file()
    for fmt, name in (("peft", "adapter_model.safetensors"), ("comfyui", "adapter_comfyui.safetensors"),
                      ("kohya", "adapter_kohya.safetensors")):  # fmt: skip
        assert (run / "export" / fmt / name).is_file()
    assert (run / "samples" / "step-00000040" / "prompt00.mp4").is_file()
