"""Helpers of the training tests: tiny recipes, running the training command, comparing adapters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).parents[2]


def _recipe(dataset: Path, out: Path, **sections) -> dict:
    base = {
        "model": {"preset": "tiny", "gradient_checkpointing": False},
        "lora": {"rank": 4, "init": "gaussian"},
        "data": {"dataset": str(dataset), "batch_size": 1},
        "optimizer": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 10, "output_dir": str(out), "mixed_precision": "no", "seed": 3},
        "checkpointing": {"every_steps": 5, "keep_last": 2},
        "logging": {"wandb_mode": "disabled"},
        "export": {"formats": ["peft"]},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return base


def _run_cli(recipe: dict, tmp: Path, *, env_extra: dict | None = None, launcher: list[str] | None = None,
             fault: str | None = None):
    """Run the training command; ``fault`` runs tests/training/_fault_run.py instead, which kills itself (see there)."""
    path = tmp / f"recipe-{abs(hash(json.dumps(recipe, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if fault:
        script = [str(Path(__file__).with_name("_fault_run.py")), str(path), fault]
    else:
        script = [str(ROOT / "hhtune" / "train.py"), str(path)]
    cmd = (launcher or [sys.executable]) + script
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def free_port() -> int:
    """A TCP port the OS has just handed out as free, for a launcher's rendezvous (no fixed port to collide on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric_steps(run: Path) -> list[int]:
    """Steps of the training records in ``metrics.jsonl`` (validation records are logged apart); fails if it is
    missing."""
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _assert_same_adapter(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)
