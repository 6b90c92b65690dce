"""The training loop: recipe -> model + LoRA -> steps -> checkpoints -> adapter.

Accelerate provides devices, DDP/FSDP wrapping and mixed precision. Gradient
accumulation, the LR schedule and data order are handled here explicitly, so that the
schedule is stepped once per optimizer step whatever the process count, and so that a
resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from ..adapters.compute import set_lora_compute_dtype
from ..adapters.inject import add_lora, trainable_parameter_count
from ..io import atomic_write_text
from ..model import HappyHorseTransformer, ModelConfig, load_checkpoint
from ..model.compile import compile_layers
from ..model.linears import enable_fp8_compute
from ..model.placement import apply_block_swap, place_model
from ..model.precision import resolve_compute_dtype
from ..plan import PlanError, check_memory_plan
from ..recipe import ModelSection, OptimizerSection, Recipe, recipe_table
from .callbacks import Callback, CallbackList
from .data import MicroBatches, TrainingDataset, loader_options
from .determinism import configure_determinism
from .distributed import (
    fsdp_requested,
    full_optimizer_state,
    full_trainable_state,
    load_full_optimizer_state,
    shard_model,
)
from .errors import TrainingError
from .metrics import MetricsLogger, peak_memory_gb
from .objective import flow_matching_loss, sigma_bucket
from .outputs import (
    check_output_dependencies,
    encode_validation_prompts,
    finish_run,
    run_validation_step,
    training_clip_summaries,
)
from .resume import ResumeMismatch, check_resume, run_fingerprint
from .state import Progress, Snapshot, latest_checkpoint, load_state, read_fingerprint, save_state


def build_model(section: ModelSection, device: torch.device | str = "cpu") -> HappyHorseTransformer:
    """The frozen base: a checkpoint streamed into a meta model, or a seeded random init of a preset.

    Compute dtype and activation offload are set here; block swap is applied after LoRA
    (:func:`hhtune.model.placement.apply_block_swap`), since it only moves frozen weights.
    """
    config = ModelConfig.preset(section.preset) if section.preset else None
    if section.checkpoint:
        dtype = torch.float32 if section.block_dtype == "fp32" else torch.bfloat16
        model = load_checkpoint(section.checkpoint, config=config, dtype=dtype, device=device,
                                fp8_storage=section.fp8_base, swap_blocks=section.blocks_to_swap)  # fmt: skip
    else:
        torch.manual_seed(section.init_seed)
        model = HappyHorseTransformer(config)  # type: ignore[arg-type]
        if section.block_dtype == "fp32":
            model = model.float()
        model = place_model(model, device, section.blocks_to_swap)  # swapped layers never reach the device
    if section.fp8_compute:
        try:
            enable_fp8_compute(model, device)
        except ValueError as e:
            raise TrainingError(str(e)) from None
    model.set_compute_dtype(section.compute_dtype)
    model.set_attention_backend(section.attention)
    model.enable_activation_offload(section.activation_offload)
    return model


def build_optimizer(params: list[torch.nn.Parameter],
                    cfg: OptimizerSection, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW when asked for and possible."""
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.eight_bit:
        if device.type != "cuda":
            raise TrainingError("optimizer.eight_bit needs a CUDA device (bitsandbytes); set it to false on CPU")
        try:
            import bitsandbytes as bnb  # noqa: PLC0415 -- optional dependency bitsandbytes
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

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_: object) -> None:
        self.raised = True

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(recipe: Recipe, log=print, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> Path:
    """Run (or resume) the recipe; return the run folder with the final adapter.

    ``callbacks`` are :class:`~hhtune.training.callbacks.Callback` objects called at step ends
    and while checkpoints are written.
    """
    configure_determinism(recipe.train.deterministic)  # before anything runs on the device
    hooks = CallbackList(callbacks)
    run_dir = Path(recipe.train.output_dir)
    accelerator = Accelerator(
        mixed_precision=recipe.train.mixed_precision,
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    accum = recipe.train.gradient_accumulation_steps
    try:
        fsdp = fsdp_requested()
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if fsdp and recipe.model.eval_checkpoint is not None:
        raise TrainingError("model.eval_checkpoint is not supported with FSDP2 yet: validate on the trained "
                            "model (model.eval_checkpoint=null) or train without FSDP")  # fmt: skip

    data = TrainingDataset(recipe.data.dataset)  # fails fast, before the model loads
    check_output_dependencies(recipe)
    fingerprint = run_fingerprint(recipe, world, data.manifest.get("fingerprint"))
    fingerprint["sharding"] = "fsdp2" if fsdp else "none"
    resume_from = latest_checkpoint(run_dir) if recipe.checkpointing.resume else None
    if resume_from is not None:
        _check_fingerprint(resume_from, fingerprint, recipe, log if main else (lambda *_: None))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        log(_format_table(recipe))
    try:  # on CUDA: prints the plan, refuses a run it says will not fit (model.ignore_memory_plan overrides)
        check_memory_plan(recipe, device, world if fsdp else 1, log if main else None)
    except PlanError as e:
        raise TrainingError(str(e)) from None
    # The text encoder is loaded, used and freed here, before the transformer exists.
    prompts = encode_validation_prompts(recipe, data, device, needed=main or fsdp)
    clips = training_clip_summaries(recipe, data) if main else None  # for the memorisation metric
    model = build_model(recipe.model, "cpu" if fsdp else device)
    if data.text_channels != model.config.text_in_channels:
        raise TrainingError(f"the dataset's text features have {data.text_channels} channels but the model takes "
                            f"{model.config.text_in_channels}: the dataset was encoded for another model "
                            "(e.g. tiny encoders for the 15b preset)")
    model.enable_gradient_checkpointing(recipe.model.gradient_checkpointing)
    peft_model = add_lora(model, recipe.lora)
    # fp32 weights, bf16 matmuls
    set_lora_compute_dtype(peft_model, resolve_compute_dtype(recipe.model.compute_dtype, device))
    snapshot = load_state(resume_from) if resume_from is not None else None
    if snapshot is not None:
        set_peft_model_state_dict(peft_model, snapshot.adapter)
    if fsdp and recipe.model.blocks_to_swap:
        raise TrainingError("model.blocks_to_swap does not combine with FSDP2, which already splits the frozen weights "
                            "across processes: set model.blocks_to_swap=0 "
                            "(see python -m hhtune.plan --world-size N)")  # fmt: skip
    swap = apply_block_swap(peft_model, recipe.model.blocks_to_swap, device)
    if recipe.model.compile:  # the finished model: LoRA and block swap in place
        compile_layers(peft_model)
    wrapped = shard_model(peft_model, device) if fsdp else peft_model  # sharding replaces the parameters
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, recipe.optimizer, device)
    # the scheduler sets the lr when built: build it first, then restore the saved lr with the optimizer state
    scheduler = build_scheduler(optimizer, recipe.optimizer, recipe.train.max_steps)
    progress = Progress()
    if snapshot is not None:
        if fsdp:
            load_full_optimizer_state(wrapped, optimizer, snapshot.optimizer)
        else:
            optimizer.load_state_dict(snapshot.optimizer)
        scheduler.load_state_dict(snapshot.scheduler)
        progress = snapshot.progress
        if main:
            log(f"resuming from {resume_from} (step {progress.step})")
    if not fsdp:
        wrapped, optimizer = accelerator.prepare(peft_model, optimizer)
    unwrapped = peft_model  # the same module object, sharded in place under FSDP

    metrics = None
    if main:
        metrics = MetricsLogger(run_dir, mode=recipe.logging.wandb_mode, project=recipe.logging.project,
                                run_name=recipe.logging.run_name, config=recipe.model_dump(mode="json"),
                                resume_id=progress.wandb_id, resume_step=progress.step)  # fmt: skip
        progress.wandb_id = metrics.wandb_id
        log(f"trainable parameters: {trainable_parameter_count(peft_model):,} | processes: {world} | device: {device}"
            + (" | FSDP2" if fsdp else ""))  # fmt: skip

    remaining = recipe.train.max_steps - progress.step
    batches = MicroBatches(data, seed=recipe.train.seed, batch_size=recipe.data.batch_size, repeat=recipe.data.repeat,
                           start=progress.step * accum * world + rank, world=world,
                           count=max(0, remaining * accum))  # fmt: skip
    loader = iter(DataLoader(batches, batch_size=None, **loader_options(recipe.data, device)))

    def checkpoint() -> None:
        adapter = full_trainable_state(unwrapped) if fsdp or main else {}  # a collective under FSDP
        optim_state = full_optimizer_state(wrapped, optimizer) if fsdp else optimizer.state_dict()
        if main:
            snap = Snapshot(progress, get_peft_model_state_dict(unwrapped, state_dict=adapter), optim_state,
                            scheduler.state_dict(), fingerprint)  # fmt: skip
            step = progress.step
            path = save_state(run_dir, snap, recipe.checkpointing.keep_last,
                              on_file=lambda f: hooks.on_checkpoint_file(step, f))  # fmt: skip
            hooks.on_save(step, path)
        accelerator.wait_for_everyone()

    validated_at = -1

    def validate() -> None:
        nonlocal validated_at
        validated_at = progress.step
        run_validation_step(recipe, accelerator, unwrapped, prompts, data, run_dir, progress.step, metrics, log,
                            sharded=fsdp, clips=clips)  # fmt: skip

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
                last = micro == accum - 1
                with _grad_sync(accelerator, wrapped, fsdp, last):
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
                grad_norm = _clip(accelerator, params, recipe.train.max_grad_norm, fsdp)
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
                validate()
            hooks.on_step_end(progress.step)

    if progress.step % recipe.checkpointing.every_steps:
        checkpoint()
    if recipe.validation.at_end and validated_at != progress.step:
        validate()
    final = full_trainable_state(unwrapped) if fsdp else None  # every process takes part in the gather
    accelerator.wait_for_everyone()
    if swap is not None:  # the base fingerprint reads the frozen weights; they stay on the host
        swap.restore("cpu")
    if main:
        finished = unwrapped if final is None else _unsharded_copy(recipe, unwrapped, final)
        finish_run(recipe, finished, data, run_dir, progress, metrics, log)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def _check_fingerprint(checkpoint: Path, current: dict, recipe: Recipe, log) -> None:
    stored = read_fingerprint(checkpoint)
    if stored is None:
        warnings.warn(f"{checkpoint} has no run fingerprint (written by an older hhtune): resuming without "
                      "checking that the settings match", stacklevel=3)  # fmt: skip
        return
    try:
        allowed = check_resume(stored, current, recipe.checkpointing.allow_changed, str(checkpoint))
    except ResumeMismatch as e:
        raise TrainingError(str(e)) from None
    for line in allowed:
        log(f"resuming with a deliberate change (checkpointing.allow_changed): {line}")


def _unsharded_copy(recipe: Recipe, sharded: torch.nn.Module, adapter: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Main process only: the base rebuilt unsharded on the CPU, carrying the gathered adapter (for export)."""
    copy = add_lora(build_model(recipe.model, "cpu"), recipe.lora)
    set_peft_model_state_dict(copy, get_peft_model_state_dict(sharded, state_dict=adapter))
    return copy


def _grad_sync(accelerator: Accelerator, wrapped: torch.nn.Module, fsdp: bool, last: bool):
    """Gradients are reduced across processes only on the last micro-batch of a step."""
    if fsdp:
        wrapped.set_requires_gradient_sync(last)
        return accelerator.autocast()
    return contextlib.nullcontext() if last else accelerator.no_sync(wrapped)


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
        for s, loss in zip(out.sigmas.tolist(), out.per_sample.tolist()):
            self.buckets.setdefault(sigma_bucket(s), []).append(loss)

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


def _clip(accelerator: Accelerator, params: list[torch.nn.Parameter], max_norm: float | None, fsdp: bool) -> float:
    if fsdp:  # sharded gradients: the global norm is reduced across processes, then every shard is scaled by it
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads)
        total = total.full_tensor() if isinstance(total, DTensor) else total
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)
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
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn  # noqa: PLC0415 -- at the top it would shadow .state.Progress
        self._p = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                           TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                           TimeRemainingColumn())  # fmt: skip
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

    def update(self, step: int, loss: float) -> None:  # noqa: ARG002 -- the interface of _Bar.update
        return None


def _progress_bar(main: bool, total: int, start: int):
    return _Bar(total, start) if main else _NoBar()
