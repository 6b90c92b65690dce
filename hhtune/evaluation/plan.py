"""What an evaluation samples: which checkpoints of a run, which prompts, seeds and strengths."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_STEP_DIR = re.compile(r"^step-(\d{8})$")
DEFAULT_STRENGTHS = (0.25, 0.5, 0.75, 1.0, 1.25)
# Processes that score clips while the next one samples, by the device that samples. On a GPU the sampler leaves the
# CPU cores idle and one worker keeps up with the 15B model (metrics about 1.1 CPU s a clip, sampling about 2 s). On
# the CPU a worker takes a core the sampler would use: scoring after sampling, with every core sampling, was faster
# (benchmarks/RESULTS.md, "Evaluation metrics vs sampling").
DEFAULT_METRIC_WORKERS = {"cuda": 1, "cpu": 0}


def metric_workers_for(device_type: str, asked: int | None) -> int:
    """The metric worker processes of an evaluation sampling on ``device_type``: ``asked``, or the default for it."""
    return asked if asked is not None else DEFAULT_METRIC_WORKERS.get(device_type, 1)


class EvaluationError(ValueError):
    """An evaluation request that cannot be served; the message says what to pass instead."""


@dataclass(frozen=True)
class Checkpoint:
    """One adapter of a run: ``label`` (``step-00000100`` or ``final``), its training step and folder."""

    label: str
    step: int
    path: Path


@dataclass(frozen=True)
class SrRequest:
    """The super-resolution stage the brand clips are rendered through, as ``validation.sr`` names it: the
    resolution (``540p``, ``1080p``; ``none`` on the command line turns the recipe's off), the SR checkpoint folder
    (or a preset name: tests) and an adapter for the SR stage."""

    resolution: str
    model: str | None
    adapter: str | None = None


@dataclass(frozen=True)
class EvalPlan:
    """Everything sampled: checkpoints (by step), brand prompts, drift prompts, seeds, strengths, and the SR stage
    of the brand clips (``None``: the base size, as the first stage renders it)."""

    run_dir: Path
    checkpoints: tuple[Checkpoint, ...]
    prompts: tuple[str, ...]
    drift_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    strengths: tuple[float, ...]
    sr: SrRequest | None = None
    first_stage: tuple[str, str | None] | None = None  # an SR run's first stage: (checkpoint or preset, adapter)


def run_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Every complete checkpoint of ``run_dir`` by step, and the final ``adapter/`` (its step from run_info.json).

    The final adapter replaces a checkpoint of the same step (they hold the same weights).
    """
    found: dict[int, Checkpoint] = {}
    root = run_dir / "checkpoints"
    if root.is_dir():
        for p in sorted(root.iterdir()):
            m = _STEP_DIR.match(p.name)
            if m and (p / "state.json").is_file() and (p / "adapter.safetensors").is_file():
                found[int(m.group(1))] = Checkpoint(p.name, int(m.group(1)), p)
    final = run_dir / "adapter"
    if (final / "adapter_config.json").is_file():
        info = run_dir / "run_info.json"
        step = int(json.loads(info.read_text()).get("steps", 0)) if info.is_file() else max(found, default=0) + 1
        found[step] = Checkpoint("final", step, final)
    return [found[s] for s in sorted(found)]


def choose_checkpoints(run_dir: Path, spec: str) -> list[Checkpoint]:
    """``all``, ``last`` or a comma list of steps (``100,200``) -> the checkpoints, oldest first."""
    available = run_checkpoints(run_dir)
    if not available:
        raise EvaluationError(f"{run_dir} holds no checkpoints (no checkpoints/step-*/ and no adapter/): pass the "
                              "output_dir of a training run that saved at least one checkpoint")  # fmt: skip
    if spec == "all":
        return available
    if spec == "last":
        return available[-1:]
    try:
        steps = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise EvaluationError(f"--checkpoints {spec!r}: use all, last, or steps such as 100,200") from None
    by_step = {c.step: c for c in available}
    missing = [s for s in steps if s not in by_step]
    if missing or not steps:
        raise EvaluationError(f"--checkpoints {spec!r}: no checkpoint at step {missing or spec}; this run has steps "
                              f"{sorted(by_step)}")  # fmt: skip
    return [by_step[s] for s in sorted(set(steps))]


def read_prompts(path: Path) -> list[str]:
    """Prompts of a text file, one a line (blank lines and ``#`` comments skipped), or a JSON list of strings."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            prompts = [str(p).strip() for p in json.loads(text)]
        except json.JSONDecodeError as e:
            raise EvaluationError(f"{path} starts like a JSON list but is not valid JSON ({e})") from None
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise EvaluationError(f"{path} holds no prompts: write one prompt a line")
    return prompts


def parse_strengths(text: str) -> tuple[float, ...]:
    """``0.25,0.5,1`` -> sorted unique positive strengths."""
    try:
        values = sorted({float(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise EvaluationError(f"--strengths {text!r}: give numbers such as 0.25,0.5,1.0") from None
    if not values or any(v <= 0 for v in values):
        raise EvaluationError(f"--strengths {text!r}: give at least one strength above 0")
    return tuple(values)
