"""A new user's first hour, scripted: footage folder -> dataset -> training -> SIGTERM -> resume -> finished re-run
-> export of an intermediate checkpoint -> the memory plan against the README's table.

Each step runs the command the README gives, in a subprocess, and checks what the user sees: the exit code, the
one ``error:`` line, the files, and the screen output (no recipe dump, scores as a table, the tiny model's noise
said, no dependency chatter).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory_tiers  # noqa: E402

FOOTAGE = ROOT / "data_prep" / "sample_footage"
KEEP = {"en_presenter.mp4": "en_presenter.srt", "de_presenter.mp4": "de_presenter.vtt"}  # two files keep it short
TIMEOUT_S = 600


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def _footage(folder: Path) -> Path:
    """Two quick-start files with their transcripts, an unreadable video and a Word document."""
    folder.mkdir()
    for video, transcript in KEEP.items():
        shutil.copy(FOOTAGE / video, folder / video)
        shutil.copy(FOOTAGE / transcript, folder / transcript)
    rows = [json.loads(line) for line in (FOOTAGE / "metadata.jsonl").read_text().splitlines() if line.strip()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["file_name"] in KEEP))
    # an mp4 header, then junk
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
    (folder / "brief.docx").write_bytes(b"PK\x03\x04 a brief, not footage")
    return folder


def _recipe(tmp: Path, dataset: Path) -> Path:
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    recipe["data"]["dataset"] = str(dataset)
    recipe["train"]["output_dir"] = str(tmp / "run")
    recipe["train"]["max_steps"] = 400  # long enough that SIGTERM lands mid-run; the resume names its own end
    recipe["checkpointing"] = {"every_steps": 2, "keep_last": 1000}
    recipe["logging"]["wandb_mode"] = "disabled"
    recipe["export"]["formats"] = ["peft"]
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _train_cmd(recipe: Path, *overrides: str) -> list[str]:
    """The README's quick-start training command, with this interpreter's accelerate."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", "accelerate_configs/cpu.yaml",
            "--num_cpu_threads_per_process", "2", "hhtune/train.py", str(recipe), *overrides]  # fmt: skip


def _build_dataset(tmp: Path) -> Path:
    footage, dataset = _footage(tmp / "footage"), tmp / "dataset"
    res = _run([sys.executable, "-m", "data_prep", "build", str(footage), "--out", str(dataset), "--config",
                "recipes/quickstart_data.yaml", "--encode"], ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    fates = {f["file"]: f for f in json.loads((dataset / "report.json").read_text())["files"]}
    assert {k for k in fates if k in KEEP or k in ("broken.mp4", "brief.docx")} == {*KEEP, "broken.mp4", "brief.docx"}
    assert fates["brief.docx"]["fate"] == "skipped" and fates["broken.mp4"]["fate"] == "skipped"
    assert all(fates[v]["fate"] in ("used", "split") for v in KEEP), fates
    check = _run([sys.executable, "-m", "data_prep", "check", str(dataset)], ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    return dataset


def _sigterm_mid_run(recipe: Path, run: Path) -> int:
    """``python -m hhtune.train`` (one process: its exit code is the command's), stopped by SIGTERM; its saved step."""
    proc = subprocess.Popen([sys.executable, "-m", "hhtune.train", str(recipe)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while not (run / "checkpoints" / "step-00000002").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "Traceback" not in err, err[-3000:]
    steps = sorted(int(p.name.removeprefix("step-")) for p in (run / "checkpoints").iterdir())
    assert steps[0] == 2 and steps[-1] < 400
    return steps[-1]


def _check_quiet_output(res: subprocess.CompletedProcess, end: int) -> None:
    out = res.stdout + res.stderr
    assert "resolved recipe" not in out and "recipe: tiny preset (random weights), LoRA rank 8" in out
    assert f"validation at step {end}:\n  " in res.stdout and "{'" not in res.stdout  # a table, not a dict
    assert "noise by design" in res.stdout
    assert "num_cpu_threads_per_process" not in out and "Warning" not in out, out[-3000:]
    assert "it/s]" not in out and "%|" not in out  # no tqdm bars beside hhtune's own


@pytest.mark.slow  # a data_prep build, three training commands, an export and a 15b memory plan: minutes on a CPU
@pytest.mark.timeout(6 * TIMEOUT_S)
def test_first_hour(tmp_path):
    dataset = _build_dataset(tmp_path)
    recipe, run = _recipe(tmp_path, dataset), tmp_path / "run"

    stopped = _sigterm_mid_run(recipe, run)
    end = stopped + 2
    resumed = _run(_train_cmd(recipe, f"train.max_steps={end}"), ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / f'step-{stopped:08d}'}" in resumed.stdout
    _check_quiet_output(resumed, end)
    info = json.loads((run / "run_info.json").read_text())
    assert info["steps"] == end and info["dataset_summary"]["seconds"] > 0
    card = (run / "adapter" / "README.md").read_text()
    assert "hours: unknown" not in card and "../" not in card

    before = _snapshot(run)
    again = _run(_train_cmd(recipe, f"train.max_steps={end}"), ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished" in again.stdout.lower() and "validation at step" not in again.stdout
    assert _snapshot(run) == before  # a finished run is not validated, exported or logged again

    out = tmp_path / "step2.safetensors"
    exported = _run([sys.executable, "-m", "hhtune.export", str(run / "checkpoints" / "step-00000002"), "--format",
                     "comfyui", "--out", str(out)], ROOT)  # fmt: skip
    assert exported.returncode == 0 and out.is_file(), exported.stderr[-3000:]

    (row,) = [t for t in memory_tiers.parse_table((ROOT / "README.md").read_text())
              if (t.clip, t.world_size, t.gpu_memory_gb) == ("256p 5 s", 1, 48)]  # fmt: skip
    planned = _run([sys.executable, "-m", "hhtune.plan", "recipes/brand_style_lora.yaml", *row.overrides,
                    "validation.seconds=5", "validation.base_resolution=256", "--seconds", "5", "--resolution", "256",
                    "--gpu-memory", "48", "--json"], ROOT)  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    plan = json.loads(planned.stdout)
    assert plan["fits"] and plan["recommendation"]["settings"] == plan["settings"]  # nothing more to change
    assert abs(plan["train_peak_gb"] - row.train_peak_gb) <= 0.051  # the README rounds to 0.1, --json to 0.01
    assert abs(plan["validation_peak_gb"] - row.validation_peak_gb) <= 0.051
