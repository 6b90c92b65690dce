"""One evaluation of a training run, start to end: plan, models, sampling, metrics, transfer, report, publish.

Everything a bad request can trip on (no checkpoints, no prompts, an adapter for another model)
is checked before the first sample is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from ..model import load_checkpoint
from ..recipe import Recipe, validate_recipe
from ..sampling.generate import NEGATIVE_PROMPT, encode_prompts
from ..sampling.super_resolution import load_sr_stage
from ..speech.languages import LANGUAGES
from ..training.data import TrainingDataset
from ..training.trainer import build_model
from .background import BackgroundScorer
from .drift_prompts import drift_prompts
from .plan import (
    Checkpoint,
    EvalPlan,
    EvaluationError,
    SrRequest,
    choose_checkpoints,
    metric_workers_for,
    parse_strengths,
    read_prompts,
)
from .references import training_references
from .sampling import Decoders, Sample, SampleSettings, sample_variant, with_adapter
from .scoring import QUALITY_METRICS, quality_values
from .session import Session, check_adapters, evaluation_encoders, finish, judge
from .sr_run import evaluate_sr_run
from .transfer import measure_transfer


def make_plan(run_dir: Path, recipe: Recipe, *, checkpoints: str, prompts_file: Path | None, seeds: int,
              strengths: str, drift_languages: str, sr: SrRequest | None = None,
              first_stage: tuple[str, str | None] | None = None) -> EvalPlan:  # fmt: skip
    """The :class:`EvalPlan` of a request; :class:`EvaluationError` for anything that cannot be served.

    ``sr`` (the command line's ``--sr``) overrides the recipe's ``validation.sr`` stage of a first-stage run. A run
    that trains an SR stage needs ``first_stage`` (checkpoint or preset, adapter spec or ``None``): the model that
    renders the base size its checkpoints refine.
    """
    if recipe.trains_sr:
        if sr is not None:
            raise EvaluationError(f"--sr is for first-stage runs: {run_dir} trains the {recipe.model.variant} stage "
                                  "itself, and its checkpoints are judged on it")  # fmt: skip
        if first_stage is None:
            raise EvaluationError(f"{run_dir} trains the {recipe.model.variant} stage: pass --first-stage, the "
                                  "first-stage checkpoint folder (distill/ or base/) that renders the clips it "
                                  "refines")  # fmt: skip
        resolution = recipe.model.variant.removeprefix("sr_")
        sr = SrRequest(resolution, recipe.model.checkpoint or recipe.model.preset)
    elif first_stage is not None:
        raise EvaluationError(f"--first-stage is for runs that train an SR stage: {run_dir} trains the "
                              f"{recipe.model.variant} model, which renders the first stage itself")  # fmt: skip
    chosen = choose_checkpoints(run_dir, checkpoints)
    if prompts_file is not None:
        prompts = read_prompts(prompts_file)
    elif recipe.validation.prompts:
        prompts = list(recipe.validation.prompts)
    else:
        raise EvaluationError(f"{run_dir}'s recipe has no validation.prompts: pass --prompts FILE (one prompt a line)")
    langs = LANGUAGES if drift_languages == "all" else tuple(x.strip() for x in drift_languages.split(",") if x.strip())
    try:
        drift = drift_prompts(langs)
    except ValueError as e:
        raise EvaluationError(f"--drift-languages: {e}") from None
    first = recipe.validation.seed
    v = recipe.validation
    if sr is None and v.sr is not None:
        sr = SrRequest(v.sr, v.sr_model, v.sr_adapter)
    return EvalPlan(run_dir, tuple(chosen), tuple(prompts), tuple(drift), tuple(range(first, first + seeds)),
                    parse_strengths(strengths), sr if sr is None or sr.resolution != "none" else None,
                    first_stage)  # fmt: skip


def _models(recipe: Recipe, device: torch.device, base_checkpoint: str | None):
    """``(distilled, base_or_None, why_no_base, check_base)``: the models sampled, sharing one where they are the
    same."""
    trained = build_model(recipe.model, device)
    distilled = (load_checkpoint(recipe.model.eval_checkpoint, device=device) if recipe.model.eval_checkpoint
                 else trained)
    if base_checkpoint:
        return distilled, load_checkpoint(base_checkpoint, device=device), None, distilled is trained
    if recipe.model.variant == "base" or recipe.model.checkpoint is None:  # a preset has one init for both
        return distilled, trained, None, distilled is trained
    why = "the run trained on the distilled checkpoint; pass --base-checkpoint to measure transfer from the base model"
    return distilled, None, why, True


def evaluate_run(run_dir: Path, *, checkpoints: str = "all", prompts_file: Path | None = None, seeds: int = 2,
                 strengths: str = "0.25,0.5,0.75,1.0,1.25", drift_languages: str = "all",
                 encoders: Path | None = None, base_checkpoint: str | None = None, device: str | None = None,
                 metric_workers: int | None = None, sr: SrRequest | None = None,
                 first_stage: tuple[str, str | None] | None = None,
                 log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Evaluate ``run_dir``; write ``eval/eval.json`` and ``eval/report.html``; return eval.json's content.

    ``metric_workers`` processes score each clip while the next one samples (0: after sampling, in this process;
    ``None``: one on a GPU, none on the CPU); the numbers are the same either way. ``sr`` overrides the recipe's
    ``validation.sr``: with an SR stage the brand clips are judged at the delivered size; drift and transfer compare
    the first stage. A run that trains an SR stage is judged on that stage, over ``first_stage``'s clips
    (:func:`~.sr_run.evaluate_sr_run`).
    """
    recipe = validate_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text()), str(run_dir / "recipe.yaml"))
    plan = make_plan(run_dir, recipe, checkpoints=checkpoints, prompts_file=prompts_file, seeds=seeds,
                     strengths=strengths, drift_languages=drift_languages, sr=sr, first_stage=first_stage)  # fmt: skip
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = metric_workers_for(dev.type, metric_workers)
    if recipe.trains_sr:
        return evaluate_sr_run(recipe, plan, encoders=encoders, device=dev, workers=workers, log=log)
    with BackgroundScorer(workers) as scorer:  # started first: its workers load their models while the DiTs load
        data = TrainingDataset(recipe.data.dataset)
        enc = evaluation_encoders(recipe, data, encoders)
        distilled, base, why_no_base, check_base = _models(recipe, dev, base_checkpoint)
        check_adapters(plan.checkpoints, distilled, check_base)
        sr_stage = (None if plan.sr is None else load_sr_stage(plan.sr.resolution, plan.sr.model, plan.sr.adapter,
                                                               compute_dtype=recipe.model.compute_dtype))
        texts = [*plan.prompts, *plan.drift_prompts, NEGATIVE_PROMPT]
        feats = encode_prompts(texts, enc.text_encoder, dev)
        v = recipe.validation
        settings = SampleSettings(seconds=v.seconds, aspect=v.aspect, base_resolution=v.base_resolution)
        session = Session(plan, Decoders(enc, dev), settings,
                           feats[: len(plan.prompts)], feats[len(plan.prompts) : -1], feats[-1],
                           *training_references(data.ds, data.manifest), run_dir / "eval", log, scorer,
                           sr_stage)  # fmt: skip
        for ref in session.references:  # their voice and face, compared with every variant's
            scorer.submit(ref, ("voice_similarity", "face_similarity"))
        samples = {"base": session.run(distilled.eval(), "base")}
        for c in plan.checkpoints:
            with with_adapter(distilled, c.path, 1.0, check_base=False) as m:
                samples[c.label] = session.run(m, c.label)
        samples = session.super_resolve(samples, [distilled] if base is None else [distilled, base])
        judged = judge(session, samples)
        transfer = _transfer(session, judged[2], distilled, base) if base is not None else {"unavailable": why_no_base}
    sr_json = None if plan.sr is None else {"resolution": plan.sr.resolution, "model": plan.sr.model,
                                            "adapter": plan.sr.adapter}  # fmt: skip
    return finish(session, samples, judged, transfer, run_dir, sr_json)


def _transfer(session: Session, best: Checkpoint, distilled: torch.nn.Module, base: torch.nn.Module) -> dict:
    """Item 7: the chosen checkpoint's gap to base + adapter at each strength on the distilled model."""
    plan = session.plan
    session.log(f"transfer of {best.label} to the distilled model at strengths {list(plan.strengths)}")
    models = {"base": base, "distilled": distilled}

    def sample(model: str, sampler: str, strength: float | None) -> list[Sample]:
        scored = session.queue(QUALITY_METRICS) if sampler == "distilled" and strength is not None else None
        kw = dict(decoders=session.decoders, settings=session.settings, sampler=sampler, negative=session.negative,
                  decode=sampler == "distilled", on_clip=scored)  # fmt: skip
        if strength is None:
            return sample_variant(models[model].eval(), model, session.brand, plan.seeds, **kw)
        with with_adapter(models[model], best.path, strength, check_base=False) as m:
            return sample_variant(m, f"{model}@{strength:g}", session.brand, plan.seeds, **kw)

    quality = lambda samples: quality_values(session.score(samples, QUALITY_METRICS))  # only what decides
    return measure_transfer(sample, plan.strengths, quality).as_json()


