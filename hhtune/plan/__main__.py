"""``python -m hhtune.plan RECIPE.yaml [key=value ...] [--gpu-memory GB] [--world-size N] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import run_command
from ..recipe import load_recipe
from . import PlanError, format_plan, plan_recipe


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli` (2 for a bad recipe or option)."""
    return run_command(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hhtune.plan", description=__doc__)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for training")
    parser.add_argument("--gpu-memory", type=float,
                        help="device memory in GB: say whether it fits and recommend settings")
    parser.add_argument("--world-size", type=int, default=1, help="FSDP2 processes (frozen weights are sharded)")
    parser.add_argument("--seconds", type=float,
                        help="training clip length (default: the dataset's largest bucket, else validation.seconds)")
    parser.add_argument("--resolution", type=int,
                        help="training base resolution (default: the dataset's largest bucket, else "
                             "validation.base_resolution)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise PlanError(f"--gpu-memory must be positive, got {args.gpu_memory}")
    plan = plan_recipe(recipe, args.gpu_memory, world_size=args.world_size, seconds=args.seconds,
                       resolution=args.resolution)  # fmt: skip
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
