"""``python -m hhtune.export SOURCE --format FMT --out PATH``: write an adapter for another front-end.

SOURCE is a training run folder (its final adapter, or with --step N its checkpoint at step N),
a training checkpoint folder (RUN/checkpoints/step-N), a PEFT adapter folder (ours or PEFT's own), or a
Wan2GP, ComfyUI, kohya or musubi-tuner file; converting between formats is exporting
such an import. Merged formats need --base (an official-layout checkpoint); for the
others --base gives the shapes a musubi-tuner file is fitted to (default: 15B).
--also PATH[:STRENGTH][,audio=F] merges further adapters in the same pass. --drop audio
leaves the audio expert and embedder parts out. --dtype sets the adapter tensors' dtype
(and that of merged_single); merged keeps the official dtypes, merged_fp8 is FP8.

    python -m hhtune.export runs/brand --format wan2gp --out brand.safetensors
    python -m hhtune.export runs/brand/checkpoints/step-00002000 --format comfyui --out brand_2000.safetensors
    python -m hhtune.export runs/brand --step 2000 --format comfyui --out brand_2000.safetensors
    python -m hhtune.export runs/brand --format merged --base ckpt/base --out ckpt/brand --strength 0.8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..adapters import parse_spec
from ..cli import run_command
from . import FORMATS, export_adapter


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli` (2 for an adapter or base that cannot be used)."""
    return run_command(_main, argv)


def _main(argv: list[str] | None) -> int:
    from ..training.state import step_checkpoint  # noqa: PLC0415 -- only --step needs it, and hhtune.training loads the trainer

    parser = argparse.ArgumentParser(prog="python -m hhtune.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("source", type=Path)
    parser.add_argument("--step", type=int, help="with a run folder as SOURCE: its checkpoint at this step")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--base", type=Path, help="base checkpoint for merged formats")
    parser.add_argument("--strength", type=float, default=1.0, help="merge strength of SOURCE")
    parser.add_argument("--also", action="append", default=[], help="another adapter to merge, PATH[:STRENGTH]")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"],
                        help="adapter dtype (and merged_single's)")
    parser.add_argument("--drop", action="append", default=[], choices=["video", "audio", "text"],
                        help="leave this modality's expert and embedder parts out")  # fmt: skip
    parser.add_argument("--ignore-base-mismatch", action="store_true",
                        help="use --base even if SOURCE was trained on another base, with a warning "
                             "(an FP8 copy of it)")
    args = parser.parse_args(argv)
    source = args.source if args.step is None else step_checkpoint(args.source, args.step)
    out = export_adapter(source, args.format, args.out, base=args.base, strength=args.strength,
                         dtype=args.dtype, extra=[tuple(parse_spec(s)) for s in args.also], drop=args.drop,
                         check_base="warn" if args.ignore_base_mismatch else True)  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
