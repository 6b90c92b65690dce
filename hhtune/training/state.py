"""Resumable training state: adapter, optimizer, scheduler, RNG and data position.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-00000100`` written through a
temporary folder and one rename, so a killed run never leaves a half checkpoint that
a resume would read. Only the adapter is stored, never the frozen base.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..io import atomic_dir, atomic_save_file

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class Progress:
    """Counters that, with the seed, fully determine where the run is."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    nonfinite_steps: int = 0
    consecutive_nonfinite: int = 0
    wandb_id: str | None = None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint at ``step``."""
    return run_dir / "checkpoints" / f"step-{step:08d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``run_dir``, if any."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    found = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").is_file())
    return found[-1] if found else None


def save_state(
    run_dir: Path,
    progress: Progress,
    adapter: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep_last: int,
) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep_last``."""
    target = checkpoint_dir(run_dir, progress.step)
    with atomic_dir(target) as tmp:
        atomic_save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, tmp / "adapter.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(progress), indent=2))
    _prune(run_dir / "checkpoints", keep_last)
    return target


def load_state(
    path: Path, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> tuple[Progress, dict[str, torch.Tensor]]:
    """Restore optimizer, scheduler and RNG from a checkpoint; return its progress and adapter weights."""
    progress = Progress(**json.loads((path / "state.json").read_text()))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return progress, load_file(path / "adapter.safetensors")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(root: Path, keep_last: int) -> None:
    found = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in found[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
