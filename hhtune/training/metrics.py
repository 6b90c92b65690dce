"""Where training numbers go: a step's losses, read once (:class:`StepStats`); ``metrics.jsonl`` in the run
folder, wandb, and a loss-curve PNG."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path
from ..recipe import LossSection
from .objective import LossOutput, sigma_bucket


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


class StepStats:
    """The losses of one optimizer step's micro-batches: kept on the device, read to the host once by :meth:`read`."""

    def __init__(self, loss: LossSection) -> None:
        self.paired = loss.audio_sigma == "independent"  # per-sample losses bucketed by the (video, audio) sigma pair
        self.balanced = loss.balance != "none"  # effective modality weights logged
        # per micro-batch: finite, loss, video, audio, [weights if balanced], sigmas, audio sigmas, per-sample
        self._pending: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.video: list[float] = []
        self.audio: list[float] = []
        self.weights: list[tuple[float, float]] = []
        self.tokens = 0
        self.buckets: dict[str, list[float]] = {}
        self.all_finite = True

    def add(self, out: LossOutput, finite: torch.Tensor) -> None:
        self.tokens += out.tokens
        head = torch.stack([finite.float(), out.loss.detach().float(), out.video_loss.float(), out.audio_loss.float()])
        weights = out.weights.float() if self.balanced else head[:0]
        self._pending.append(torch.cat([head, weights, out.sigmas.float(), out.audio_sigmas.float(),
                                        out.per_sample.float()]))  # fmt: skip

    def read(self) -> None:
        """Copy the step's numbers to the host in one transfer; non-finite micro-batches are left out of the means."""
        for values in torch.cat(self._pending).cpu().split([len(t) for t in self._pending]):
            finite, loss, video, audio, *rest = values.tolist()
            self.all_finite &= finite == 1.0
            if finite != 1.0:
                continue
            self.losses.append(loss)
            self.video.append(video)
            self.audio.append(audio)
            if self.balanced:
                self.weights.append((rest[0], rest[1]))
                rest = rest[2:]
            n = len(rest) // 3
            for s, s_audio, sample_loss in zip(rest[:n], rest[n : 2 * n], rest[2 * n :]):
                bucket = sigma_bucket(s, audio=s_audio if self.paired else None)
                self.buckets.setdefault(bucket, []).append(sample_loss)
        self._pending = []

    def mean_loss(self) -> float:
        return _mean(self.losses)

    def summary(self, *, lr, grad_norm, step_time, data_wait, world, memory, nonfinite) -> dict:
        out = {
            "loss": self.mean_loss(), "loss_video": _mean(self.video), "loss_audio": _mean(self.audio),
            "lr": lr, "tokens_per_s": self.tokens * world / step_time, "step_time_s": step_time,
            "data_wait_share": data_wait / step_time, "peak_memory_gb": memory, "nonfinite_steps": nonfinite,
        }  # fmt: skip
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        if self.weights:
            out["weight_video"] = _mean([w for w, _ in self.weights])
            out["weight_audio"] = _mean([w for _, w in self.weights])
        out.update({f"loss_{k}": _mean(v) for k, v in sorted(self.buckets.items())})
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


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
