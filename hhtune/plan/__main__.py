"""``python -m hhtune.plan RECIPE.yaml [key=value ...] [--gpu-memory GB] [--world-size N] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from . import Plan, PlanError, plan_recipe

_ROWS = [
    ("frozen_weights", "frozen weights (resident)", "both"),
    ("lora_params", "LoRA parameters (fp32)", "both"),
    ("lora_grads", "LoRA gradients (fp32)", "train"),
    ("optimizer_state", "AdamW state", "both"),
    ("activations", "activations saved for backward", "train"),
    ("temporaries", "temporaries (one layer's recompute/backward)", "train"),
    ("eval_checkpoint_copy", "eval checkpoint (second DiT)", "validation"),
    ("validation_forward", "sampling forward (no grad)", "validation"),
    ("vaes", "video + audio VAE (bf16)", "validation"),
    ("vae_decode_workspace", "VAE decode workspace (estimate)", "validation"),
]


def format_plan(plan: Plan) -> str:
    """The plan as a table by component, then the peaks and the recommendation."""
    s, (t, h, w) = plan.settings, plan.train_shape.video
    head = (f"memory plan (per process, world size {plan.world_size}): {plan.train_shape.tokens} tokens/clip "
            f"(latent {t}x{h}x{w}), batch {plan.train_shape.batch}; checkpointing={s.gradient_checkpointing} "
            f"offload={s.activation_offload} fp8_base={s.fp8_base} blocks_to_swap={s.blocks_to_swap}")
    lines = [head, f"training clips planned from {plan.train_source}", f"{'component':<48}{'GB':>9}  used in"]
    lines += [f"{label:<48}{plan.components[key]:>9.2f}  {where}" for key, label, where in _ROWS]
    lines += [f"{'training step peak':<48}{plan.train_peak_gb:>9.2f}",
              f"{'validation peak':<48}{plan.validation_peak_gb:>9.2f}",
              f"{'prompt encoding (T5Gemma-9B bf16, alone)':<48}{plan.prompt_encoding_gb:>9.2f}"]  # fmt: skip
    if plan.gpu_memory_gb is not None:
        lines.append(f"fits {plan.gpu_memory_gb:g} GB (5% + 0.5 GB headroom): {'yes' if plan.fits else 'NO'}")
        rec = plan.recommendation
        if rec is None:
            lines.append("no setting fits one process; try FSDP2 over more GPUs (--world-size) or a lower resolution"
                         + (", or validate on the trained model (model.eval_checkpoint=null: the eval "
                            f"checkpoint is a second DiT of {plan.components['eval_checkpoint_copy']:.1f} GB)"
                            if plan.components["eval_checkpoint_copy"] else ""))
        elif rec is not plan:
            lines.append(f"recommended: {' '.join(rec.settings.overrides())} "
                         f"(train {rec.train_peak_gb:.1f} GB, validation {rec.validation_peak_gb:.1f} GB)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli` (2 for a bad recipe or option)."""
    from ..cli import run_command

    return run_command(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hhtune.plan", description=__doc__)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for training")
    parser.add_argument("--gpu-memory", type=float, help="device memory in GB: say whether it fits and recommend settings")
    parser.add_argument("--world-size", type=int, default=1, help="FSDP2 processes (frozen weights are sharded)")
    parser.add_argument("--seconds", type=float, help="training clip length (default: the dataset's largest bucket, else validation.seconds)")
    parser.add_argument("--resolution", type=int, help="training base resolution (default: the dataset's largest bucket, else validation.base_resolution)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise PlanError(f"--gpu-memory must be positive, got {args.gpu_memory}")
    plan = plan_recipe(recipe, args.gpu_memory, world_size=args.world_size, seconds=args.seconds,
                       resolution=args.resolution)  # fmt: skip
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
