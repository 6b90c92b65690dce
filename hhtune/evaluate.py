"""Judge a training run's adapters as a brand team would, and find the strength for the distilled model.

    python -m hhtune.evaluate RUN_DIR [--checkpoints all|last|STEP,...] [--prompts FILE] [--seeds K]
        [--strengths 0.25,0.5,0.75,1.0,1.25] [--encoders DIR] [--base-checkpoint DIR] [--device cpu|cuda]
        [--metric-workers N] [--sr 540p|1080p|none --sr-model SR_DIR [--sr-adapter PATH[:STRENGTH]]]
        [--first-stage DIR [--first-stage-adapter PATH[:STRENGTH]]]

Samples the base without adapter (the control) and each chosen checkpoint at fixed seeds through
the validation pipeline (the distilled sampler, 8 steps), on the run's validation prompts (or
--prompts) and on shipped neutral prompts in 7 languages (drift). Scores voice, speech quality,
lip-sync, face and look; measures the adapter's transfer from the base to the distilled model at
each strength; writes RUN_DIR/eval/report.html and eval.json, and the recommended strength into
the adapter's model card and file headers.

With the recipe's validation.sr (or --sr) the brand clips are judged as delivered: refined by the
super-resolution stage at 540p or 1080p after the first stage, as python -m hhtune.sample --sr renders
them. Drift and the transfer compare the first stage. --sr none judges the base size only.

A run that trains a super-resolution stage (model.variant sr_540p or sr_1080p) is judged on that
stage: --first-stage renders every prompt once at the base size, and the SR model without adapter
(the control) and with each checkpoint refines those clips. There is no strength to transfer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hhtune.cli import run_command
from hhtune.contract import SR_RESOLUTIONS
from hhtune.evaluation.plan import DEFAULT_METRIC_WORKERS, DEFAULT_STRENGTHS, EvaluationError, SrRequest
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
    p.add_argument("--metric-workers", type=int, default=None,
                   help="processes that score each clip while the next one samples; 0 scores after sampling, in "
                        "this process (default: " + ", ".join(f"{n} on {d}" for d, n in DEFAULT_METRIC_WORKERS.items())
                        + "; the numbers are the same)")
    p.add_argument("--sr", choices=[*SR_RESOLUTIONS, "none"],
                   help="judge the brand clips after this super-resolution stage (default: the recipe's "
                        "validation.sr; none: the base size only)")
    p.add_argument("--sr-model", help="with --sr: the SR checkpoint folder (540p_sr/ or 1080p_sr/)")
    p.add_argument("--sr-adapter", help="with --sr: an adapter for the SR stage, PATH[:STRENGTH]")
    p.add_argument("--first-stage", help="for a run that trains an SR stage: the first-stage checkpoint folder "
                                         "(distill/ or base/) whose clips its checkpoints refine")  # fmt: skip
    p.add_argument("--first-stage-adapter", help="with --first-stage: an adapter for it, PATH[:STRENGTH]")
    return p


def _sr_request(args: argparse.Namespace) -> SrRequest | None:
    """The --sr options as a request (``None``: the recipe decides); one error line for a half-given stage."""
    if args.sr in (None, "none"):
        if args.sr_model or args.sr_adapter:
            raise EvaluationError("--sr-model and --sr-adapter need --sr 540p or --sr 1080p")
        return None if args.sr is None else SrRequest("none", None)
    if not args.sr_model:
        raise EvaluationError(f"--sr {args.sr} needs --sr-model, the SR checkpoint folder (540p_sr/ or 1080p_sr/)")
    return SrRequest(args.sr, args.sr_model, args.sr_adapter)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.seeds < 1:
        raise EvaluationError("--seeds must be at least 1")
    if args.metric_workers is not None and args.metric_workers < 0:
        raise EvaluationError("--metric-workers must be 0 or more")
    sr = _sr_request(args)
    if args.first_stage_adapter and not args.first_stage:
        raise EvaluationError("--first-stage-adapter needs --first-stage")
    first_stage = (args.first_stage, args.first_stage_adapter) if args.first_stage else None
    if not (args.run_dir / "recipe.yaml").is_file():
        raise EvaluationError(f"{args.run_dir} is not a training run folder (no recipe.yaml): pass a run's output_dir")
    from hhtune.evaluation.runner import evaluate_run  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    result = evaluate_run(args.run_dir, checkpoints=args.checkpoints, prompts_file=args.prompts, seeds=args.seeds,
                          strengths=args.strengths, drift_languages=args.drift_languages, encoders=args.encoders,
                          base_checkpoint=args.base_checkpoint, device=args.device,
                          metric_workers=args.metric_workers, sr=sr, first_stage=first_stage,
                          log=print)  # fmt: skip
    rec = result["recommendation"]
    print(json.dumps({"recommended_checkpoint": rec["checkpoint"], "recommended_strength": rec["strength"],
                      "report": str(args.run_dir / "eval" / "report.html")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
