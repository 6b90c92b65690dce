"""The objects a run is made of, each built from its recipe section: model, optimizer, schedule, batches, metrics.

Nothing here checks whether the sections combine; :func:`hhtune.training.checks.check_recipe`
does that before anything is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..model import HappyHorseTransformer, ModelConfig, check_variant, load_checkpoint, load_variant
from ..model.linears import enable_fp8_compute
from ..model.placement import place_model
from ..recipe import ModelSection, OptimizerSection, Recipe
from .data import Batch, MicroBatches, TrainingDataset, loader_options
from .errors import TrainingError
from .metrics import MetricsLogger
from .state import Progress


def build_model(section: ModelSection, device: torch.device | str = "cpu") -> HappyHorseTransformer:
    """The frozen base: a checkpoint streamed into a meta model, or a seeded random init of a preset.

    Either is run as ``section.variant`` (v1 coordinates and local attention for the SR stages); a checkpoint
    of another stage is refused (:func:`~hhtune.model.variants.check_variant`, naming the layout it found).

    Compute dtype and activation offload are set here; block swap is applied after LoRA
    (:func:`hhtune.model.placement.apply_block_swap`), since it only moves frozen weights.
    """
    config = ModelConfig.preset(section.preset, section.variant) if section.preset else None
    if section.checkpoint:
        dtype = torch.float32 if section.block_dtype == "fp32" else torch.bfloat16
        kwargs = dict(dtype=dtype, device=device, fp8_storage=section.fp8_base, swap_blocks=section.blocks_to_swap)
        if config is None:
            model = load_variant(section.checkpoint, section.variant, **kwargs)
        else:  # the preset's shapes, checked against the checkpoint's as it loads
            check_variant(section.checkpoint, section.variant)
            model = load_checkpoint(section.checkpoint, config=config, **kwargs)
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


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerSection) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW when asked for (the check that the device is CUDA comes first)."""
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.eight_bit:
        try:
            import bitsandbytes as bnb  # noqa: PLC0415 -- optional package (hhtune[bnb]), only for optimizer.eight_bit
        except ImportError as e:
            raise TrainingError("optimizer.eight_bit needs bitsandbytes: pip install 'hhtune[bnb]'") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerSection,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
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


def build_batches(recipe: Recipe, data: TrainingDataset, progress: Progress, *, world: int, rank: int,
                  device: torch.device | str = "cpu") -> Iterator[Batch]:  # fmt: skip
    """The micro-batches this process still has to consume, from ``progress.step`` on, prefetched by a DataLoader.

    Global micro-batch ``g`` goes to process ``g % world``, so a resumed run (or one with more
    processes and less accumulation) meets the same batches in the same order.
    """
    accum = recipe.train.gradient_accumulation_steps
    remaining = recipe.train.max_steps - progress.step
    batches = MicroBatches(data, seed=recipe.train.seed, batch_size=recipe.data.batch_size, repeat=recipe.data.repeat,
                           start=progress.step * accum * world + rank, world=world,
                           count=max(0, remaining * accum))  # fmt: skip
    return iter(DataLoader(batches, batch_size=None, **loader_options(recipe.data, device)))


def build_metrics(recipe: Recipe, run_dir: Path, progress: Progress) -> MetricsLogger:
    """The run's metrics log (main process), continuing the wandb run and ``metrics.jsonl`` of a resumed run."""
    return MetricsLogger(run_dir, mode=recipe.logging.wandb_mode, project=recipe.logging.project,
                         run_name=recipe.logging.run_name, config=recipe.model_dump(mode="json"),
                         resume_id=progress.wandb_id, resume_step=progress.step)  # fmt: skip
