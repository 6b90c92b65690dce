"""The training loop: recipe -> model + LoRA -> steps -> checkpoints -> adapter.

Accelerate provides devices, DDP/FSDP wrapping and mixed precision. Gradient
accumulation, the LR schedule and data order are handled here explicitly, so that the
schedule is stepped once per optimizer step whatever the process count, and so that a
resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import warnings
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch.utils.data import DataLoader

from ..io import atomic_write_text
from ..lora import add_lora, trainable_parameter_count
from ..model import HappyHorseTransformer, ModelConfig, load_checkpoint
from ..model.offload import apply_block_swap
from ..plan import PlanError, check_memory_plan
from ..recipe import ModelSection, OptimizerSection, Recipe, recipe_table
from .data import MicroBatches, TrainingDataset
from .metrics import MetricsLogger, peak_memory_gb, plot_loss_curve
from .objective import flow_matching_loss, sigma_bucket
from .state import Progress, latest_checkpoint, load_state, save_state


class TrainingError(RuntimeError):
    """The run had to stop; the message says why and how to continue."""


def build_model(section: ModelSection, device: torch.device | str = "cpu") -> HappyHorseTransformer:
    """The frozen base: a checkpoint streamed into a meta model, or a seeded random init of a preset.

    Compute dtype and activation offload are set here; block swap is applied after LoRA
    (:func:`hhtune.model.offload.apply_block_swap`), since it only moves frozen weights.
    """
    config = ModelConfig.preset(section.preset) if section.preset else None
    if section.checkpoint:
        dtype = torch.float32 if section.block_dtype == "fp32" else torch.bfloat16
        model = load_checkpoint(section.checkpoint, config=config, dtype=dtype, device=device,
                                fp8_storage=section.fp8_base)  # fmt: skip
    else:
        torch.manual_seed(section.init_seed)
        model = HappyHorseTransformer(config)  # type: ignore[arg-type]
        if section.block_dtype == "fp32":
            model = model.float()
        model = model.to(device)
    model.set_compute_dtype(section.compute_dtype)
    model.enable_activation_offload(section.activation_offload)
    return model


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerSection, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW when asked for and possible."""
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.eight_bit:
        if device.type != "cuda":
            raise TrainingError("optimizer.eight_bit needs a CUDA device (bitsandbytes); set it to false on CPU")
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise TrainingError("optimizer.eight_bit needs bitsandbytes: pip install 'hhtune[bnb]'") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerSection, max_steps: int):
    """Linear warmup, then constant, cosine or linear decay to ``min_lr_ratio`` (per optimizer step)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _StopFlag:
    """Set by SIGTERM so the loop checkpoints at the next step boundary and exits."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_: object) -> None:
        self.raised = True

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _fault_injection(step: int) -> None:
    """Test hooks: ``HHTUNE_FAULT=kill@N`` or ``sigterm@N`` after optimizer step N."""
    spec = os.environ.get("HHTUNE_FAULT", "")
    if "@" in spec:
        kind, at = spec.split("@", 1)
        if int(at) == step:
            os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGTERM)


def train(recipe: Recipe, log=print) -> Path:
    """Run (or resume) the recipe; return the run folder with the final adapter."""
    run_dir = Path(recipe.train.output_dir)
    accelerator = Accelerator(
        mixed_precision=recipe.train.mixed_precision,
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    accum = recipe.train.gradient_accumulation_steps

    data = TrainingDataset(recipe.data.dataset)  # fails fast, before the model loads
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        log(_format_table(recipe))
    try:  # on CUDA: prints the plan, refuses a run it says will not fit (model.ignore_memory_plan overrides)
        check_memory_plan(recipe, device, world if accelerator.distributed_type.name == "FSDP" else 1, log if main else None)
    except PlanError as e:
        raise TrainingError(str(e)) from None
    model = build_model(recipe.model, device)
    if data.text_channels != model.config.text_in_channels:
        raise TrainingError(
            f"the dataset's text features have {data.text_channels} channels but the model takes "
            f"{model.config.text_in_channels}: the dataset was encoded for another model (e.g. tiny encoders for the 15b preset)"
        )
    model.enable_gradient_checkpointing(recipe.model.gradient_checkpointing)
    peft_model = add_lora(model, recipe.lora)
    swap = apply_block_swap(peft_model, recipe.model.blocks_to_swap, device)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, recipe.optimizer, device)
    scheduler = build_scheduler(optimizer, recipe.optimizer, recipe.train.max_steps)

    progress = Progress()
    resume_from = latest_checkpoint(run_dir) if recipe.checkpointing.resume else None
    if resume_from is not None:
        progress, adapter = load_state(resume_from, optimizer, scheduler)
        set_peft_model_state_dict(peft_model, adapter)
        if main:
            log(f"resuming from {resume_from} (step {progress.step})")
    wrapped, optimizer = accelerator.prepare(peft_model, optimizer)

    metrics = None
    if main:
        metrics = MetricsLogger(run_dir, mode=recipe.logging.wandb_mode, project=recipe.logging.project,
                                run_name=recipe.logging.run_name, config=recipe.model_dump(mode="json"),
                                resume_id=progress.wandb_id, resume_step=progress.step)  # fmt: skip
        progress.wandb_id = metrics.wandb_id
        log(f"trainable parameters: {trainable_parameter_count(peft_model):,} | processes: {world} | device: {device}")

    remaining = recipe.train.max_steps - progress.step
    batches = MicroBatches(data, seed=recipe.train.seed, batch_size=recipe.data.batch_size, repeat=recipe.data.repeat,
                           start=progress.step * accum * world + rank, world=world, count=max(0, remaining * accum))  # fmt: skip
    loader = iter(DataLoader(batches, batch_size=None, num_workers=recipe.data.num_workers,
                             persistent_workers=False))  # fmt: skip

    def checkpoint() -> None:
        if main:
            adapter = get_peft_model_state_dict(accelerator.unwrap_model(wrapped))
            save_state(run_dir, progress, adapter, optimizer, scheduler, recipe.checkpointing.keep_last)

    wrapped.train()
    bar = _progress_bar(main, recipe.train.max_steps, progress.step)
    with _StopFlag() as stop, bar:
        while progress.step < recipe.train.max_steps:
            t0 = time.perf_counter()
            data_wait, stats = 0.0, _StepStats()
            for micro in range(accum):
                t_data = time.perf_counter()
                batch = next(loader).to(device)
                data_wait += time.perf_counter() - t_data
                sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(wrapped)
                with sync:
                    out = flow_matching_loss(wrapped, batch, recipe.loss, seed=recipe.train.seed,
                                             caption_dropout=recipe.caption_dropout)  # fmt: skip
                    finite = bool(torch.isfinite(out.loss))
                    accelerator.backward(out.loss / accum if finite else out.loss * 0.0)
                stats.add(out, finite)
            nonfinite = _any_process(accelerator, not stats.all_finite)
            grad_norm = None
            if nonfinite:
                optimizer.zero_grad(set_to_none=True)
                progress.nonfinite_steps += 1
                progress.consecutive_nonfinite += 1
            else:
                progress.consecutive_nonfinite = 0
                grad_norm = _clip(accelerator, params, recipe.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.step += 1
            step_time = time.perf_counter() - t0

            if main and progress.step % recipe.logging.every_steps == 0:
                metrics.log(progress.step, stats.summary(
                    lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, step_time=step_time, data_wait=data_wait,
                    world=world, memory=peak_memory_gb(device), nonfinite=progress.nonfinite_steps))  # fmt: skip
            bar.update(progress.step, stats.mean_loss())
            if progress.consecutive_nonfinite >= recipe.train.max_consecutive_nonfinite:
                checkpoint()
                raise TrainingError(
                    f"{progress.consecutive_nonfinite} non-finite losses in a row at step {progress.step}: "
                    "lower optimizer.lr, check the dataset's latents, or raise train.max_consecutive_nonfinite; "
                    "a checkpoint was saved and re-running the command resumes from it"
                )
            stopping = _any_process(accelerator, stop.raised)
            if progress.step % recipe.checkpointing.every_steps == 0 or stopping:
                checkpoint()
            if stopping:
                accelerator.wait_for_everyone()
                raise SystemExit(f"stopped by SIGTERM at step {progress.step}; re-run the same command to resume")
            if recipe.validation.every_steps and progress.step % recipe.validation.every_steps == 0:
                _validate(recipe, accelerator, wrapped, data, run_dir, progress.step, metrics, log)
            _fault_injection(progress.step)

    if progress.step % recipe.checkpointing.every_steps:
        checkpoint()
    if recipe.validation.at_end:
        _validate(recipe, accelerator, wrapped, data, run_dir, progress.step, metrics, log)
    accelerator.wait_for_everyone()
    if swap is not None:  # the base fingerprint reads the frozen weights; they stay on the host
        swap.restore("cpu")
    if main:
        _finish(recipe, accelerator.unwrap_model(wrapped), data, run_dir, progress, metrics, log)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


class _StepStats:
    """Losses of one optimizer step's micro-batches."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.video: list[float] = []
        self.audio: list[float] = []
        self.tokens = 0
        self.buckets: dict[str, list[float]] = {}
        self.all_finite = True

    def add(self, out, finite: bool) -> None:
        self.all_finite &= finite
        self.tokens += out.tokens
        if not finite:
            return
        self.losses.append(float(out.loss.detach()))
        self.video.append(float(out.video_loss))
        self.audio.append(float(out.audio_loss))
        for s, l in zip(out.sigmas.tolist(), out.per_sample.tolist()):
            self.buckets.setdefault(sigma_bucket(s), []).append(l)

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def summary(self, *, lr, grad_norm, step_time, data_wait, world, memory, nonfinite) -> dict:
        out = {
            "loss": self.mean_loss(), "loss_video": _mean(self.video), "loss_audio": _mean(self.audio),
            "lr": lr, "tokens_per_s": self.tokens * world / step_time, "step_time_s": step_time,
            "data_wait_share": data_wait / step_time, "peak_memory_gb": memory, "nonfinite_steps": nonfinite,
        }  # fmt: skip
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        out.update({f"loss_{k}": _mean(v) for k, v in sorted(self.buckets.items())})
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def _clip(accelerator: Accelerator, params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    if max_norm is not None:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _format_table(recipe: Recipe) -> str:
    rows = recipe_table(recipe)
    width = max(len(k) for k, _ in rows)
    return "resolved recipe\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


class _Bar:
    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                           TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
        self._task = self._p.add_task("train", total=total, completed=start, loss=float("nan"))

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *a):
        self._p.__exit__(*a)

    def update(self, step: int, loss: float) -> None:
        self._p.update(self._task, completed=step, loss=loss)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return None

    def update(self, step: int, loss: float) -> None:
        return None


def _progress_bar(main: bool, total: int, start: int):
    return _Bar(total, start) if main else _NoBar()


def _validate(recipe, accelerator, wrapped, data, run_dir, step, metrics, log) -> None:
    """Render the validation prompts with the distilled sampler (main process only)."""
    if not recipe.validation.prompts or not accelerator.is_main_process:
        return
    try:
        from ..sampling.validation import run_validation
    except ImportError as e:
        warnings.warn(f"validation skipped: the sampler is not available ({e})", stacklevel=2)
        return
    from .validation_model import validation_model

    with validation_model(recipe, accelerator.unwrap_model(wrapped), accelerator.device) as model:
        scores = run_validation(
            model, recipe.validation.prompts,
            encoders=_encoder_paths(recipe, data), out_dir=run_dir / "samples" / f"step-{step:08d}", step=step,
            seed=recipe.validation.seed, reference_images=recipe.validation.reference_images or None,
            acoustic_model=recipe.validation.acoustic_model, wandb_run=metrics.wandb_run if metrics else None,
            seconds=recipe.validation.seconds, aspect=recipe.validation.aspect,
            base_resolution=recipe.validation.base_resolution,
        )  # fmt: skip
    if metrics is not None and scores:
        metrics.log(step, {f"val/{k}": v for k, v in scores.items()})
    log(f"validation at step {step}: {scores}")


def _encoder_paths(recipe: Recipe, data: TrainingDataset):
    from ..encoders import EncoderPaths

    if recipe.validation.encoders:
        folder = Path(recipe.validation.encoders)
        return EncoderPaths(video_vae=folder / "video_vae", audio_vae=folder / "audio_vae", text_encoder=folder / "text_encoder")
    enc = data.manifest.get("encoders") or {}
    if not enc:
        raise TrainingError("validation needs encoders: set validation.encoders (the dataset's manifest names none)")
    return EncoderPaths(**{k: enc[k] for k in ("video_vae", "audio_vae", "text_encoder")})


def _finish(recipe, peft_model, data, run_dir, progress, metrics, log) -> None:
    """Final adapter (PEFT format), run_info.json, exports and the loss curve."""
    from ..fingerprint import base_fingerprint

    adapter_dir = run_dir / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    info = {
        "steps": progress.step,
        "nonfinite_steps": progress.nonfinite_steps,
        "recipe_hash": recipe.hash(),
        "trigger_words": recipe.export.trigger_words,
        "languages": sorted({str(x) for x in data.ds["language"]}),
        "dataset_summary": {"clips": len(data), "dataset": str(data.path),
                            "fingerprint": data.manifest.get("fingerprint")},  # fmt: skip
        "base_fingerprint": base_fingerprint(peft_model),
        "base": recipe.model.checkpoint or recipe.model.preset,
    }
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))
    _export(recipe, peft_model, run_dir, info, log)
    if metrics is not None:
        plot_loss_curve(metrics.history(), run_dir / "loss_curve.png")
        metrics.finish()
    log(f"done: {progress.step} steps; adapter in {adapter_dir}")


def _export(recipe, peft_model, run_dir, info, log) -> None:
    try:
        from ..export import export_adapter
    except ImportError as e:
        warnings.warn(f"export skipped (only the PEFT adapter in {run_dir / 'adapter'} was written): {e}", stacklevel=2)
        return
    meta = {
        "base_fingerprint": info["base_fingerprint"], "training_steps": info["steps"], "recipe_hash": info["recipe_hash"],
        "trigger_words": info["trigger_words"], "languages": info["languages"], "dataset_summary": info["dataset_summary"],
    }  # fmt: skip
    for fmt in recipe.export.formats:
        base = recipe.model.checkpoint if fmt.startswith("merged") else None
        if fmt.startswith("merged") and base is None:
            warnings.warn(f"export format {fmt!r} needs model.checkpoint (a base on disk); skipped", stacklevel=2)
            continue
        out = export_adapter(peft_model, fmt, run_dir / "export" / fmt, base=base, dtype=recipe.export.dtype, metadata=meta)
        log(f"exported {fmt}: {out}")
