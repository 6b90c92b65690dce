"""The training loop: recipe -> checks -> model + LoRA -> steps -> checkpoints -> adapter.

:class:`LoraTrainer` runs one recipe in named stages (``setup``, ``step``, ``save_checkpoint``,
``validate``, ``finish``) and :func:`train` drives them. Accelerate provides devices, DDP/FSDP
wrapping and mixed precision. Gradient accumulation, the LR schedule and data order are
handled here explicitly, so that the schedule is stepped once per optimizer step whatever the
process count, and so that a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch.distributed.tensor import DTensor

from ..adapters.compute import set_lora_compute_dtype
from ..adapters.inject import add_lora, trainable_parameter_count
from ..io import atomic_write_text
from ..model.compile import compile_layers
from ..model.placement import apply_block_swap
from ..model.precision import resolve_compute_dtype
from ..plan import PlanError, check_memory_plan
from ..progress import ProgressBar
from ..recipe import Recipe
from .balance import EmaBalance
from .builders import build_batches, build_metrics, build_model, build_optimizer, build_scheduler
from .callbacks import Callback, CallbackList
from .checks import check_dataset, check_recipe, check_text_channels
from .data import TrainingDataset
from .determinism import configure_determinism
from .distributed import (
    fsdp_requested,
    full_optimizer_state,
    full_trainable_state,
    load_full_optimizer_state,
    shard_model,
)
from .errors import RecipeConflict, RunInterrupted, TrainingError
from .heldout import hold_out_validation_clips
from .metrics import StepStats, peak_memory_gb
from .outputs import (
    check_output_dependencies,
    encode_validation_prompts,
    finish_run,
    run_validation_step,
    training_clip_summaries,
)
from .resume import check_resume, run_fingerprint
from .sr_objective import training_loss
from .state import Progress, Snapshot, finished_step, latest_checkpoint, load_state, read_fingerprint, save_state

Log = Callable[[str], object]


def train(recipe: Recipe, log: Log = print, callbacks: list[Callback] | tuple[Callback, ...] = (), *,
          force_validate: bool = False, force_export: bool = False) -> Path:  # fmt: skip
    """Run (or resume) the recipe; return the run folder with the final adapter.

    ``callbacks`` are :class:`~hhtune.training.callbacks.Callback` objects called at step ends
    and while checkpoints are written. SIGTERM checkpoints at the next step boundary and exits.
    A run that is already finished is left as it is (nothing loaded, no file written) unless
    ``force_validate`` / ``force_export`` ask to redo its final validation / its adapter and exports.
    """
    trainer = LoraTrainer(recipe, log=log, callbacks=callbacks)
    reopen = force_validate or force_export
    trainer.setup(reopen_finished=reopen)
    if trainer.finished:
        return trainer.finish(validate=force_validate, export=force_export) if reopen else trainer.run_dir
    steps, every = recipe.train.max_steps, recipe.checkpointing.every_steps
    with _StopFlag() as stop, ProgressBar("train", steps, completed=trainer.progress.step, enabled=trainer.main) as bar:
        while trainer.progress.step < steps:
            loss = trainer.step()
            step = trainer.progress.step
            bar.update(step, f"loss {loss:.4f}")
            trainer.stop_if_diverged()
            stopping = _any_process(trainer.accelerator, stop.raised)
            if step % every == 0 or stopping:
                trainer.save_checkpoint()
            if stopping:
                trainer.accelerator.wait_for_everyone()
                raise RunInterrupted(f"stopped by SIGTERM at step {step}; re-run the same command to resume")
            if recipe.validation.every_steps and step % recipe.validation.every_steps == 0:
                trainer.validate()
            trainer.hooks.on_step_end(step)
    return trainer.finish()


class LoraTrainer:
    """One run of a recipe: :meth:`setup`, then :meth:`step` until ``train.max_steps`` with
    :meth:`save_checkpoint` and :meth:`validate` on their schedules, then :meth:`finish`.

    Every process of a launch builds one; only the main process logs and writes the run folder.
    """

    def __init__(self, recipe: Recipe, log: Log = print, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        self.recipe = recipe
        self.hooks = CallbackList(callbacks)
        self.run_dir = Path(recipe.train.output_dir)
        self._log = log
        self._validated_at = -1
        self.finished = False  # the run was finished before this launch (see setup's reopen_finished)

    def setup(self, *, reopen_finished: bool = False) -> None:
        """Check the recipe before anything loads, then read the dataset, resume, build and wrap the model.

        A finished run (:func:`~hhtune.training.state.finished_step`) stops after the resume check
        with :attr:`finished` set and one line logged, before anything is written or loaded,
        unless ``reopen_finished`` (for :meth:`finish` to redo validation or exports).
        """
        recipe = self.recipe
        try:
            self.fsdp = fsdp_requested()
        except ValueError as e:
            raise RecipeConflict(str(e)) from None
        check_recipe(recipe, device_type="cuda" if torch.cuda.is_available() else "cpu", fsdp=self.fsdp)
        check_output_dependencies(recipe)
        configure_determinism(recipe.train.deterministic)  # before anything runs on the device
        self.accelerator = Accelerator(mixed_precision=recipe.train.mixed_precision, cpu=not torch.cuda.is_available())
        self.main, self.device = self.accelerator.is_main_process, self.accelerator.device
        self.world = self.accelerator.num_processes
        self.log: Log = self._log if self.main else _quiet
        self.data = TrainingDataset(recipe.data.dataset)
        check_dataset(recipe, self.data)
        recipe = self.recipe = hold_out_validation_clips(recipe, self.data, self.log)
        resume_from = self._start_run_folder(reopen_finished)
        if self.finished and not reopen_finished:
            return
        try:  # on CUDA: prints the plan, refuses a run it says will not fit (model.ignore_memory_plan overrides)
            check_memory_plan(recipe, self.device, self.world if self.fsdp else 1, self._log if self.main else None)
        except PlanError as e:
            raise RecipeConflict(str(e)) from None
        # The text encoder is loaded, used and freed here, before the transformer exists.
        self.prompts = encode_validation_prompts(recipe, self.data, self.device, needed=self.main or self.fsdp)
        self.clips = training_clip_summaries(recipe, self.data) if self.main else None  # for the memorisation metric
        snapshot = load_state(resume_from) if resume_from is not None else None
        self._build_model(snapshot)
        self._build_optimizer(snapshot)
        if resume_from is not None:
            self.log(f"resuming from {resume_from} (step {self.progress.step})")
        if not self.fsdp:
            self.wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.metrics = build_metrics(recipe, self.run_dir, self.progress) if self.main else None
        if self.metrics is not None:
            self.progress.wandb_id = self.metrics.wandb_id
        self.log(f"trainable parameters: {trainable_parameter_count(self.model):,} | processes: {self.world} | "
                 f"device: {self.device}" + (" | FSDP2" if self.fsdp else ""))  # fmt: skip
        self.batches = build_batches(recipe, self.data, self.progress, world=self.world,
                                     rank=self.accelerator.process_index, device=self.device)  # fmt: skip
        self.wrapped.train()

    def _start_run_folder(self, reopen_finished: bool) -> Path | None:
        """The run's fingerprint, checked against the checkpoint to resume from (returned); recipe.yaml written."""
        recipe = self.recipe
        self.fingerprint = run_fingerprint(recipe, self.world, self.data.manifest.get("fingerprint"))
        self.fingerprint["sharding"] = "fsdp2" if self.fsdp else "none"
        resume_from = latest_checkpoint(self.run_dir) if recipe.checkpointing.resume else None
        if resume_from is not None:
            _check_fingerprint(resume_from, self.fingerprint, recipe, self.log)
            self.finished = _report_finished(self.run_dir, recipe.train.max_steps, reopen_finished, self.log)
        if self.finished and not reopen_finished:
            return resume_from
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "recipe.yaml",
                              yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
            self.log(_recipe_summary(recipe, self.run_dir))
        return resume_from

    def _build_model(self, snapshot: Snapshot | None) -> None:
        """``self.model``: the base with LoRA (resumed, block swap applied); ``self.wrapped``: it sharded under FSDP."""
        recipe, device = self.recipe, self.device
        model = build_model(recipe.model, "cpu" if self.fsdp else device)
        check_text_channels(self.data, model.config.text_in_channels)
        model.enable_gradient_checkpointing(recipe.model.gradient_checkpointing)
        self.model = add_lora(model, recipe.lora)
        set_lora_compute_dtype(self.model, resolve_compute_dtype(recipe.model.compute_dtype, device))  # bf16 matmuls
        if snapshot is not None:
            set_peft_model_state_dict(self.model, snapshot.adapter)
        self.swap = apply_block_swap(self.model, recipe.model.blocks_to_swap, device)
        if recipe.model.compile:  # the finished model: LoRA and block swap in place
            compile_layers(self.model)
        # sharding replaces the parameters; the module object stays the same
        self.wrapped = shard_model(self.model, device) if self.fsdp else self.model

    def _build_optimizer(self, snapshot: Snapshot | None) -> None:
        """Optimizer, schedule and progress, restored from ``snapshot`` when resuming."""
        recipe = self.recipe
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, recipe.optimizer)
        # the scheduler sets the lr when built: build it first, then restore the saved lr with the optimizer state
        self.scheduler = build_scheduler(self.optimizer, recipe.optimizer, recipe.train.max_steps)
        self.progress = Progress()
        self.balance = self._build_balance(snapshot)
        if snapshot is None:
            return
        if self.fsdp:
            load_full_optimizer_state(self.wrapped, self.optimizer, snapshot.optimizer)
        else:
            self.optimizer.load_state_dict(snapshot.optimizer)
        self.scheduler.load_state_dict(snapshot.scheduler)
        self.progress = snapshot.progress

    def _build_balance(self, snapshot: Snapshot | None) -> EmaBalance | None:
        """The running loss means of ``loss.balance: ema`` (restored from ``snapshot``), or ``None``."""
        loss = self.recipe.loss
        if loss.balance == "none":
            return None
        acc = self.accelerator
        reduce = (lambda t: acc.reduce(t, reduction="mean")) if self.world > 1 else None
        balance = EmaBalance(loss.balance_decay, self.device, reduce)
        if snapshot is not None and snapshot.balance is not None:
            balance.load_state_dict(snapshot.balance)
        return balance

    def step(self) -> float:
        """One optimizer step: ``train.gradient_accumulation_steps`` micro-batches, then the update and the schedule.

        The update is skipped (and counted) when any process met a non-finite loss. The step's
        losses stay on the device until its end and are read to the host once. Returns the
        step's mean loss.
        """
        recipe, accum = self.recipe, self.recipe.train.gradient_accumulation_steps
        t0 = time.perf_counter()
        data_wait, stats = 0.0, StepStats(recipe.loss)
        for micro in range(accum):
            t_data = time.perf_counter()
            batch = next(self.batches).to(self.device)
            data_wait += time.perf_counter() - t_data
            with _grad_sync(self.accelerator, self.wrapped, self.fsdp, last=micro == accum - 1):
                out = training_loss(self.wrapped, batch, recipe, balance=self.balance)  # first-stage or SR
                finite = torch.isfinite(out.loss)
                self.accelerator.backward(torch.where(finite, out.loss / accum, out.loss * 0.0))
            stats.add(out, finite)
        stats.read()
        grad_norm = self._update(stats.all_finite)
        self.scheduler.step()
        self.progress.step += 1
        step_time = time.perf_counter() - t0
        if self.metrics is not None and self.progress.step % recipe.logging.every_steps == 0:
            self.metrics.log(self.progress.step, stats.summary(
                lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm, step_time=step_time, data_wait=data_wait,
                world=self.world, memory=peak_memory_gb(self.device),
                nonfinite=self.progress.nonfinite_steps))  # fmt: skip
        return stats.mean_loss()

    def _update(self, all_finite: bool) -> float | None:
        """Clip and apply the accumulated gradients (returns their norm), or drop them if any process saw a NaN/inf."""
        p = self.progress
        if _any_process(self.accelerator, not all_finite):
            self.optimizer.zero_grad(set_to_none=True)
            p.nonfinite_steps += 1
            p.consecutive_nonfinite += 1
            return None
        p.consecutive_nonfinite = 0
        grad_norm = _clip(self.accelerator, self.params, self.recipe.train.max_grad_norm, self.fsdp)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def stop_if_diverged(self) -> None:
        """After ``train.max_consecutive_nonfinite`` skipped steps in a row: checkpoint, then raise."""
        p = self.progress
        if p.consecutive_nonfinite >= self.recipe.train.max_consecutive_nonfinite:
            self.save_checkpoint()
            raise TrainingError(
                f"{p.consecutive_nonfinite} non-finite losses in a row at step {p.step}: "
                "lower optimizer.lr, check the dataset's latents, or raise train.max_consecutive_nonfinite; "
                "a checkpoint was saved and re-running the command resumes from it"
            )

    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current step (every process takes part; the main one writes)."""
        adapter = full_trainable_state(self.model) if self.fsdp or self.main else {}  # a collective under FSDP
        optim_state = full_optimizer_state(self.wrapped, self.optimizer) if self.fsdp else self.optimizer.state_dict()
        if self.main:
            snap = Snapshot(self.progress, get_peft_model_state_dict(self.model, state_dict=adapter), optim_state,
                            self.scheduler.state_dict(), self.fingerprint,
                            None if self.balance is None else self.balance.state_dict())  # fmt: skip
            step = self.progress.step
            path = save_state(self.run_dir, snap, self.recipe.checkpointing.keep_last,
                              on_file=lambda f: self.hooks.on_checkpoint_file(step, f))  # fmt: skip
            self.hooks.on_save(step, path)
        self.accelerator.wait_for_everyone()

    def validate(self) -> None:
        """Render and score the validation prompts at the current step (every process takes part under FSDP)."""
        self._validated_at = self.progress.step
        run_validation_step(self.recipe, self.accelerator, self.model, self.prompts, self.data, self.run_dir,
                            self.progress.step, self.metrics, self.log, sharded=self.fsdp,
                            clips=self.clips)  # fmt: skip

    def finish(self, *, validate: bool | None = None, export: bool = True) -> Path:
        """The last checkpoint and validation if not yet done, then the adapter, run_info.json and exports.

        A finished run re-opened by :meth:`setup` redoes only what ``validate`` / ``export`` ask.
        """
        recipe, progress = self.recipe, self.progress
        if progress.step % recipe.checkpointing.every_steps and not self.finished:
            self.save_checkpoint()
        if (recipe.validation.at_end if validate is None else validate) and self._validated_at != progress.step:
            self.validate()
        final = full_trainable_state(self.model) if self.fsdp else None  # every process takes part in the gather
        self.accelerator.wait_for_everyone()
        if self.swap is not None:  # the base fingerprint reads the frozen weights; they stay on the host
            self.swap.restore("cpu")
        if self.main and export:
            finished = self.model if final is None else _unsharded_copy(recipe, self.model, final)
            finish_run(recipe, finished, self.data, self.run_dir, progress, self.metrics, self.log)
        elif self.metrics is not None:
            self.metrics.finish()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return self.run_dir


def _quiet(*_: object) -> None:
    return None


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


def _check_fingerprint(checkpoint: Path, current: dict, recipe: Recipe, log) -> None:
    stored = read_fingerprint(checkpoint)
    if stored is None:
        warnings.warn(f"{checkpoint} has no run fingerprint (written by an older hhtune): resuming without "
                      "checking that the settings match", stacklevel=5)  # fmt: skip
        return
    # ResumeMismatch: exit 2
    allowed = check_resume(stored, current, recipe.checkpointing.allow_changed, str(checkpoint))
    for line in allowed:
        log(f"resuming with a deliberate change (checkpointing.allow_changed): {line}")


def _report_finished(run_dir: Path, max_steps: int, reopen: bool, log: Log) -> bool:
    """Whether the run in ``run_dir`` was finished before; if so, one line says so and what would change that."""
    step = finished_step(run_dir, max_steps)
    if step is not None:
        todo = "redoing what --force-validate / --force-export ask" if reopen else (
            "nothing to do (raise train.max_steps to train on; --force-validate / --force-export redo those)")
        log(f"{run_dir} is finished: {step} steps (train.max_steps = {max_steps}), adapter in {run_dir / 'adapter'}; "
            + todo)  # fmt: skip
    return step is not None


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


def _recipe_summary(recipe: Recipe, run_dir: Path) -> str:
    """One line on screen; the full resolved recipe is in ``run_dir/recipe.yaml``."""
    m = recipe.model
    base = m.checkpoint or f"{m.preset} preset (random weights)"
    return (f"recipe: {base}, LoRA rank {recipe.lora.rank}, {recipe.train.max_steps} steps "
            f"at lr {recipe.optimizer.lr:g}, dataset {recipe.data.dataset} (full recipe: {run_dir / 'recipe.yaml'})")
