"""Fine-tune a LoRA adapter on HappyHorse.

Usage:
    accelerate launch hhtune/train.py RECIPE.yaml [section.key=value ...]
    python -m hhtune.train RECIPE.yaml [section.key=value ...]

Re-running the same command resumes from the newest checkpoint in the run folder; on a finished run
it changes nothing (--force-validate / --force-export redo the final validation / the exports).
Example: accelerate launch hhtune/train.py recipes/quickstart.yaml train.max_steps=50 lora.rank=8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script (`accelerate launch hhtune/train.py`): import the installed package,
    # not sibling modules by their bare names.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    if (_here / "__init__.py").is_file() and str(_here.parent) not in sys.path:
        sys.path.insert(0, str(_here.parent))  # a source checkout that is not pip-installed


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, validate the recipe, and train; exit codes as in :mod:`hhtune.cli`."""
    from hhtune.cli import run_command  # noqa: PLC0415 -- after the script-mode sys.path fix-up above
    from hhtune.quiet import quiet_dependencies  # noqa: PLC0415 -- likewise

    quiet_dependencies()
    return run_command(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="hhtune/train.py",
        description="Fine-tune a LoRA adapter on HappyHorse from a YAML recipe (see recipes/).",
        epilog="Overrides use dotted keys, e.g. train.max_steps=200 lora.rank=32 logging.wandb_mode=disabled. "
        "Re-running the same command resumes from the run's newest checkpoint. Exit codes: 0 done, 1 the run "
        "failed, 2 bad input, 3 a missing tool or package, 4 out of memory, 130 interrupted (SIGTERM checkpoints "
        "first); under accelerate launch or torchrun the launcher exits 1 for any failure.",
    )
    parser.add_argument("recipe", help="path to a YAML recipe")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--force-validate", action="store_true",
                        help="on a finished run: validate the final adapter again "
                             "(else a finished run is left as it is)")
    parser.add_argument("--force-export", action="store_true",
                        help="on a finished run: write the adapter, model card and export.formats again")
    args = parser.parse_intermixed_args(argv)

    from hhtune.recipe import load_recipe, recipe_table  # noqa: PLC0415 -- entry point: torch and peft load after argparse so --help is instant
    from hhtune.training import train  # noqa: PLC0415 -- entry point: torch and peft load after argparse so --help is instant

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_recipe:
        for key, value in recipe_table(recipe):
            print(f"{key} = {value}")
        return 0
    train(recipe, force_validate=args.force_validate, force_export=args.force_export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
