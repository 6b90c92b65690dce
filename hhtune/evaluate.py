"""Judge a training run's adapters as a brand team would, and find the strength for the distilled model.

    python -m hhtune.evaluate RUN_DIR [--checkpoints all|last|STEP,...] [--prompts FILE] [--seeds K]
        [--strengths 0.25,0.5,0.75,1.0,1.25] [--encoders DIR] [--base-checkpoint DIR] [--device cpu|cuda]
        [--metric-workers N]

Samples the base without adapter (the control) and each chosen checkpoint at fixed seeds through
the validation pipeline (the distilled sampler, 8 steps), on the run's validation prompts (or
--prompts) and on shipped neutral prompts in 7 languages (drift). Scores voice, speech quality,
lip-sync, face and look; measures the adapter's transfer from the base to the distilled model at
each strength; writes RUN_DIR/eval/report.html and eval.json, and the recommended strength into
the adapter's model card and file headers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hhtune.cli import run_command
from hhtune.evaluation.plan import DEFAULT_METRIC_WORKERS, DEFAULT_STRENGTHS, EvaluationError
from hhtune.quiet import quiet_dependencies


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli`."""
    quiet_dependencies()  # e.g. torch's weight_norm FutureWarning when the audio VAE loads
    return run_command(_main, argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hhtune.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("run_dir", type=Path, help="a training run's output_dir (checkpoints/, adapter/, recipe.yaml)")
    p.add_argument("--checkpoints", default="all", help="all, last, or steps such as 100,200 (default: all)")
    p.add_argument("--prompts", type=Path, help="text file, one prompt a line (default: the run's validation prompts)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt, from validation.seed up (default 2)")
    p.add_argument("--strengths", default=",".join(f"{s:g}" for s in DEFAULT_STRENGTHS),
                   help="adapter strengths tried on the distilled model")
    p.add_argument("--drift-languages", default="all",
                   help="languages of the neutral drift prompts (all, or en,de,...)")
    p.add_argument("--encoders", type=Path,
                   help="folder with video_vae/, audio_vae/, text_encoder/ (default: the run's)")
    p.add_argument("--base-checkpoint", help="the base (non-distilled) checkpoint, for the transfer measurement of a "
                                             "run trained on the distilled model")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--metric-workers", type=int, default=DEFAULT_METRIC_WORKERS,
                   help="processes that score each clip while the next one samples; 0 scores after sampling, "
                        f"in this process (default {DEFAULT_METRIC_WORKERS}; the numbers are the same)")
    return p


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.seeds < 1:
        raise EvaluationError("--seeds must be at least 1")
    if args.metric_workers < 0:
        raise EvaluationError("--metric-workers must be 0 or more")
    if not (args.run_dir / "recipe.yaml").is_file():
        raise EvaluationError(f"{args.run_dir} is not a training run folder (no recipe.yaml): pass a run's output_dir")
    from hhtune.evaluation.runner import evaluate_run  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    result = evaluate_run(args.run_dir, checkpoints=args.checkpoints, prompts_file=args.prompts, seeds=args.seeds,
                          strengths=args.strengths, drift_languages=args.drift_languages, encoders=args.encoders,
                          base_checkpoint=args.base_checkpoint, device=args.device,
                          metric_workers=args.metric_workers, log=print)  # fmt: skip
    rec = result["recommendation"]
    print(json.dumps({"recommended_checkpoint": rec["checkpoint"], "recommended_strength": rec["strength"],
                      "report": str(args.run_dir / "eval" / "report.html")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
