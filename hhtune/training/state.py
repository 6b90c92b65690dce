"""Resumable training state: adapter, optimizer, scheduler, RNG, data position, run fingerprint and loss balance.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-00000100`` written through a
temporary folder and one rename, so a killed run never leaves a half checkpoint that
a resume would read. Only the adapter is stored, never the frozen base.

Nothing is unpickled on load: tensors go through safetensors or ``torch.load(weights_only=True)``
(which only rebuilds tensors and plain containers), so a shared run folder cannot run code.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..io import atomic_dir, atomic_save_file

_STEP_DIR = re.compile(r"^step-(\d{8})$")
_STALE_TMP = re.compile(r"^\.step-\d{8}\..*\.tmp$")
FINGERPRINT_FILE = "fingerprint.json"
BALANCE_FILE = "balance.pt"  # only in runs with loss.balance: ema
RUN_INFO_FILE = "run_info.json"  # written by the run's end (hhtune.training.outputs.finish_run)


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot be read safely; the message names the file and what to do."""


@dataclass
class Progress:
    """Counters that, with the seed, fully determine where the run is."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    nonfinite_steps: int = 0
    consecutive_nonfinite: int = 0
    wandb_id: str | None = None


@dataclass
class Snapshot:
    """Everything one checkpoint holds, as plain tensors and containers (full, unsharded state)."""

    progress: Progress
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    fingerprint: dict[str, Any] | None = None
    balance: dict[str, torch.Tensor] | None = None  # running loss means of loss.balance: ema (balance.pt)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint at ``step``."""
    return run_dir / "checkpoints" / f"step-{step:08d}"


def step_checkpoint(run_dir: Path, step: int) -> Path:
    """The complete checkpoint of the run in ``run_dir`` at ``step`` (``RUN --step N`` of the export and sample
    commands); ``FileNotFoundError`` naming the steps the run has when there is none."""
    path = checkpoint_dir(Path(run_dir), step)
    if (path / "state.json").is_file():
        return path
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (it has no checkpoints/), so --step {step} "
                                "cannot be found in it")  # fmt: skip
    steps = sorted(int(m.group(1)) for p in root.iterdir()
                   if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file())
    raise FileNotFoundError(f"{run_dir} has no checkpoint at step {step}; it has steps {steps} "
                            "(checkpointing.keep_last keeps only the newest ones)")  # fmt: skip


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``run_dir``, if any."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    found = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").is_file())
    return found[-1] if found else None


def finished_step(run_dir: Path, max_steps: int) -> int | None:
    """The step a finished run ended at, or ``None`` if the run in ``run_dir`` has steps or its end left to do.

    Finished: the newest checkpoint is at or past ``max_steps`` and ``run_info.json``, written
    at the end with the adapter, records that same step.
    """
    latest, info = latest_checkpoint(run_dir), run_dir / RUN_INFO_FILE
    if latest is None or not info.is_file():
        return None
    step = int(_STEP_DIR.match(latest.name).group(1))
    try:
        recorded = json.loads(info.read_text()).get("steps")
    except (json.JSONDecodeError, AttributeError):
        return None  # a damaged run_info.json: the end is redone
    return step if step >= max_steps and recorded == step else None


def save_state(run_dir: Path, snapshot: Snapshot, keep_last: int,
               on_file: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
    """Write a checkpoint atomically and prune all but the newest ``keep_last``.

    ``on_file(path)`` is called after each file is written into the temporary folder
    (training callbacks use it; see :class:`hhtune.training.callbacks.Callback`).
    """
    target = checkpoint_dir(run_dir, snapshot.progress.step)
    written = on_file or (lambda _p: None)
    with atomic_dir(target) as tmp:
        atomic_save_file({k: v.detach().cpu().contiguous() for k, v in snapshot.adapter.items()},
                         tmp / "adapter.safetensors")
        written(tmp / "adapter.safetensors")
        for name, state in (("optimizer.pt", snapshot.optimizer), ("scheduler.pt", snapshot.scheduler),
                            ("rng.pt", _rng_state())):  # fmt: skip
            torch.save(state, tmp / name)
            written(tmp / name)
        if snapshot.balance is not None:
            torch.save(snapshot.balance, tmp / BALANCE_FILE)
            written(tmp / BALANCE_FILE)
        if snapshot.fingerprint is not None:
            (tmp / FINGERPRINT_FILE).write_text(json.dumps(snapshot.fingerprint, indent=2, sort_keys=True))
            written(tmp / FINGERPRINT_FILE)
        (tmp / "state.json").write_text(json.dumps(asdict(snapshot.progress), indent=2))  # last: marks it complete
        written(tmp / "state.json")
    _prune(run_dir / "checkpoints", keep_last)
    return target


def read_fingerprint(path: Path) -> dict[str, Any] | None:
    """The run fingerprint stored in checkpoint ``path`` (``None`` for checkpoints that predate fingerprints)."""
    f = path / FINGERPRINT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def load_state(path: Path) -> Snapshot:
    """Read a checkpoint and restore the RNG state; the caller puts optimizer and scheduler state in place."""
    progress = Progress(**json.loads((path / "state.json").read_text()))
    optimizer = _safe_load(path / "optimizer.pt")
    scheduler = _safe_load(path / "scheduler.pt")
    _set_rng_state(_safe_load(path / "rng.pt"))
    balance = _safe_load(path / BALANCE_FILE) if (path / BALANCE_FILE).is_file() else None
    return Snapshot(progress, load_file(path / "adapter.safetensors"), optimizer, scheduler, read_fingerprint(path),
                    balance)  # fmt: skip


def _safe_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers; anything else is refused by name."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise CheckpointLoadError(
            f"{path} holds more than tensors and plain containers, so it was not loaded (loading it could run "
            f"code from the file). Checkpoints written by hhtune never do: the file was altered or written by "
            f"something else; delete this checkpoint folder to resume from an older one. ({str(e).splitlines()[0]})"
        ) from e


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),  # (version, tuple of ints, None): plain containers
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(root: Path, keep_last: int) -> None:
    found = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in found[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.iterdir():  # temporary folders of saves that were killed half-way
        if _STALE_TMP.match(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
