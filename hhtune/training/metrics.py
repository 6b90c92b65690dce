"""Where training numbers go: ``metrics.jsonl`` in the run folder, wandb, and a loss-curve PNG."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path


class MetricsLogger:
    """Append-only JSON lines plus an optional wandb run (main process only)."""

    def __init__(self, run_dir: Path, *, mode: str, project: str, run_name: str | None, config: dict,
                 resume_id: str | None, resume_step: int) -> None:  # fmt: skip
        self.path = run_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self.wandb_run = None
        if mode != "disabled":
            import wandb  # noqa: PLC0415 -- heavy: wandb loads in ~1 s, only when W&B logging is on

            self.wandb_run = wandb.init(
                project=project, name=run_name, config=config, dir=str(run_dir), mode=mode,
                id=resume_id, resume="allow" if resume_id else None,
            )  # fmt: skip

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` at ``step``."""
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps that are about to be redone."""
        if not self.path.is_file():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))

    def history(self) -> list[dict[str, Any]]:
        """Every logged record."""
        if not self.path.is_file():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> None:
    """Loss (total, video, audio) against step, saved as a PNG."""
    import matplotlib  # noqa: PLC0415 -- Agg is set before pyplot loads; only the loss curve needs matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- Agg is set before pyplot loads; only the loss curve needs matplotlib

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in ("loss", "loss_video", "loss_audio"):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory, or the process's peak resident memory on the CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 2**20 if os.uname().sysname != "Darwin" else rss_kb / 2**30
