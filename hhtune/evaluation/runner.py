"""One evaluation of a training run, start to end: plan, models, sampling, metrics, transfer, report, publish.

Everything a bad request can trip on (no checkpoints, no prompts, an adapter for another model)
is checked before the first sample is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..adapters import check_compatible
from ..adapters.provenance import read_run_adapter
from ..encoders import EncoderPaths
from ..io import atomic_write_text
from ..model import load_checkpoint
from ..recipe import Recipe, validate_recipe
from ..sampling.generate import NEGATIVE_PROMPT, encode_prompts, held_on
from ..sampling.super_resolution import SrStage, load_sr_stage
from ..speech.languages import LANGUAGES
from ..training.data import TrainingDataset
from ..training.outputs import encoder_paths
from ..training.trainer import build_model
from .background import BackgroundScorer
from .clips import AVClip
from .curves import plot_curves
from .drift_prompts import drift_prompts
from .metrics import DESCRIPTIONS, MetricResult
from .metrics import drift as drift_metric
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
from .publish import publish
from .references import training_references
from .report import write_report
from .sampling import (
    Decoders,
    Features,
    Sample,
    SampleSettings,
    sample_variant,
    super_resolve_samples,
    with_adapter,
)
from .scoring import (
    METRICS,
    QUALITY_METRICS,
    choose_checkpoint,
    quality_values,
    result_dict,
    score_samples,
    score_value,
)
from .transfer import measure_transfer


@dataclass
class _Session:
    """What every sampling call of one evaluation shares."""

    plan: EvalPlan
    decoders: Decoders  # the VAEs, loaded once for every clip of the evaluation
    settings: SampleSettings
    brand: list[Features]  # text features of the brand prompts
    drift: list[Features]  # ... of the neutral drift prompts
    negative: Features  # ... of the base sampler's negative prompt
    references: list[AVClip]
    no_references: str | None
    out: Path
    log: Callable[[str], None]
    scorer: BackgroundScorer  # scores each brand clip while the next one samples
    sr: SrStage | None = None  # renders the brand clips at the delivered size, as validation.sr does

    def queue(self, names: tuple[str, ...]) -> Callable[[AVClip], None]:
        """What :func:`sample_variant` calls with each new clip: start computing the metrics ``names`` of it."""
        return lambda clip: self.scorer.submit(clip, names)

    def run(self, model: torch.nn.Module, label: str) -> tuple[list[Sample], list[Sample]]:
        """``label``'s brand samples (mp4s under ``eval/videos/label``) and drift samples, distilled sampler."""
        p = self.plan
        self.log(f"sampling {label}: {len(p.prompts)} prompts + {len(p.drift_prompts)} drift prompts "
                 f"x {len(p.seeds)} seeds")
        kw = dict(decoders=self.decoders, settings=self.settings)
        return (sample_variant(model, label, self.brand, p.seeds, out_dir=self.out / "videos" / label,
                               on_clip=self.queue(METRICS), decode=self.sr is None, **kw),
                sample_variant(model, label, self.drift, p.seeds, **kw))  # fmt: skip

    def super_resolve(self, samples: dict[str, tuple[list[Sample], list[Sample]]],
                      first_stage: list[torch.nn.Module]) -> dict[str, tuple[list[Sample], list[Sample]]]:  # fmt: skip
        """Every variant's brand samples refined by the SR stage; ``first_stage`` waits on the host meanwhile."""
        if self.sr is None:
            return samples
        device = self.decoders.device
        self.log(f"super-resolution to {self.sr.resolution}: {sum(len(b) for b, _ in samples.values())} clips")
        with ExitStack() as stack:
            for m in {id(m): m for m in first_stage}.values():
                stack.enter_context(held_on(m, "cpu"))
            stack.enter_context(held_on(self.sr.model, device))
            return {label: (super_resolve_samples(brand, self.sr, self.brand, decoders=self.decoders,
                                                  settings=self.settings, device=device, out_dir=self.out / "videos",
                                                  on_clip=self.queue(METRICS)), drift)
                    for label, (brand, drift) in samples.items()}  # fmt: skip

    def score(self, samples: list[Sample], names: tuple[str, ...] = METRICS) -> dict[str, MetricResult]:
        self.scorer.finish()  # what the background workers computed is then in the metrics' caches
        return score_samples([s.clip for s in samples], self.references, no_references=self.no_references,
                             names=names)  # fmt: skip


def make_plan(run_dir: Path, recipe: Recipe, *, checkpoints: str, prompts_file: Path | None, seeds: int,
              strengths: str, drift_languages: str, sr: SrRequest | None = None) -> EvalPlan:  # fmt: skip
    """The :class:`EvalPlan` of a request; :class:`EvaluationError` for anything that cannot be served.

    ``sr`` (the command line's ``--sr``) overrides the recipe's ``validation.sr`` stage.
    """
    if recipe.trains_sr:
        raise EvaluationError(f"{run_dir} trains the {recipe.model.variant} stage, and hhtune.evaluate judges "
                              "first-stage adapters: render it with python -m hhtune.sample --sr ... --sr-model "
                              "SR_DIR --sr-adapter RUN_DIR/adapter")  # fmt: skip
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
                    parse_strengths(strengths), sr if sr is None or sr.resolution != "none" else None)  # fmt: skip


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


def _check_adapters(chosen: tuple[Checkpoint, ...], model: torch.nn.Module, check_base: bool) -> None:
    """Refuse, before any sampling, an adapter whose modules, shapes or base model do not fit ``model``."""
    for c in chosen:
        check_compatible(read_run_adapter(c.path), model, str(c.path), check_base)


def _encoders(recipe: Recipe, data, given: Path | None) -> EncoderPaths:
    if given is not None:
        return EncoderPaths(video_vae=given / "video_vae", audio_vae=given / "audio_vae",
                            text_encoder=given / "text_encoder")
    return encoder_paths(recipe, data)


def evaluate_run(run_dir: Path, *, checkpoints: str = "all", prompts_file: Path | None = None, seeds: int = 2,
                 strengths: str = "0.25,0.5,0.75,1.0,1.25", drift_languages: str = "all",
                 encoders: Path | None = None, base_checkpoint: str | None = None, device: str | None = None,
                 metric_workers: int | None = None, sr: SrRequest | None = None,
                 log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Evaluate ``run_dir``; write ``eval/eval.json`` and ``eval/report.html``; return eval.json's content.

    ``metric_workers`` processes score each clip while the next one samples (0: after sampling, in this process;
    ``None``: one on a GPU, none on the CPU); the numbers are the same either way. ``sr`` overrides the recipe's
    ``validation.sr``: with an SR stage the brand clips are judged at the delivered size; drift and transfer compare
    the first stage.
    """
    recipe = validate_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text()), str(run_dir / "recipe.yaml"))
    plan = make_plan(run_dir, recipe, checkpoints=checkpoints, prompts_file=prompts_file, seeds=seeds,
                     strengths=strengths, drift_languages=drift_languages, sr=sr)  # fmt: skip
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = metric_workers_for(dev.type, metric_workers)
    with BackgroundScorer(workers) as scorer:  # started first: its workers load their models while the DiTs load
        data = TrainingDataset(recipe.data.dataset)
        enc = _encoders(recipe, data, encoders)
        distilled, base, why_no_base, check_base = _models(recipe, dev, base_checkpoint)
        _check_adapters(plan.checkpoints, distilled, check_base)
        sr_stage = (None if plan.sr is None else load_sr_stage(plan.sr.resolution, plan.sr.model, plan.sr.adapter,
                                                               compute_dtype=recipe.model.compute_dtype))
        texts = [*plan.prompts, *plan.drift_prompts, NEGATIVE_PROMPT]
        feats = encode_prompts(texts, enc.text_encoder, dev)
        v = recipe.validation
        settings = SampleSettings(seconds=v.seconds, aspect=v.aspect, base_resolution=v.base_resolution)
        session = _Session(plan, Decoders(enc, dev), settings,
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
        metrics = {k: session.score(brand_s) for k, (brand_s, _) in samples.items()}
        drifts = {c.label: drift_metric([s.clip for s in samples[c.label][1]], [s.clip for s in samples["base"][1]])
                  for c in plan.checkpoints}  # fmt: skip
        best_label, why = choose_checkpoint({c.label: metrics[c.label] for c in plan.checkpoints})
        best = next(c for c in plan.checkpoints if c.label == best_label)
        transfer = _transfer(session, best, distilled, base) if base is not None else {"unavailable": why_no_base}
    result = _result(plan, session.out, samples, metrics, drifts, best, why, transfer)
    _write(result, session.out, run_dir, log)
    return result


def _transfer(session: _Session, best: Checkpoint, distilled: torch.nn.Module, base: torch.nn.Module) -> dict:
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


def _result(plan: EvalPlan, out: Path, samples, metrics, drifts, best: Checkpoint, why: dict, transfer: dict) -> dict:
    """eval.json's content (paths relative to ``out``)."""
    not_measured = {}
    for per in [*metrics.values(), drifts]:
        for r in per.values():
            if r.unavailable is not None:
                not_measured.setdefault(r.name, r.unavailable)
    if "unavailable" in transfer:
        not_measured["transfer"] = transfer["unavailable"]
    strength = transfer.get("recommended_strength")
    return {
        "run_dir": str(plan.run_dir), "eval_dir": str(out),
        "checkpoints": [{"label": c.label, "step": c.step, "path": str(c.path)} for c in plan.checkpoints],
        "prompts": list(plan.prompts), "drift_prompts": list(plan.drift_prompts), "seeds": list(plan.seeds),
        "strengths": list(plan.strengths),
        "super_resolution": None if plan.sr is None else {"resolution": plan.sr.resolution, "model": plan.sr.model,
                                                          "adapter": plan.sr.adapter},
        "samples": [{"variant": s.variant, "prompt": s.prompt, "seed": s.seed, "mp4": s.mp4.relative_to(out).as_posix()}
                    for brand_s, _ in samples.values() for s in brand_s if s.mp4 is not None],
        "metrics": {k: {n: result_dict(r) for n, r in per.items()} for k, per in metrics.items()},
        "drift": {k: result_dict(r) for k, r in drifts.items()},
        "recommendation": {"checkpoint": best.label, "step": best.step, "path": str(best.path), "why": why,
                           "strength": strength},
        "transfer": transfer,
        "recommended_strength": strength,
        "not_measured": [{"metric": k, "reason": v} for k, v in sorted(not_measured.items())],
        "descriptions": {**DESCRIPTIONS, "transfer gap": "How far the distilled model with the adapter lands from "
                         "the base model with the adapter (32 steps with guidance), as a share of the clip; "
                         "0 is identical."},
    }  # fmt: skip


def _write(result: dict, out: Path, run_dir: Path, log) -> None:
    steps = {c["label"]: c["step"] for c in result["checkpoints"]}
    names = {n for per in result["metrics"].values() for n in per}
    values = {n: {lab: _value(result["metrics"][lab].get(n)) for lab in steps} for n in names}
    values["drift"] = {lab: _value(result["drift"].get(lab)) for lab in steps}
    base = {n: _value(result["metrics"]["base"].get(n)) for n in names}
    curves = plot_curves(steps, values, base, out / "curves")
    result["curves"] = {k: p.relative_to(out).as_posix() for k, p in curves.items()}
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False, default=_plain))
    report = write_report(result, out)
    evaluation = {"recommended_strength": result["recommended_strength"],
                  "recommended_checkpoint": result["recommendation"]["checkpoint"],
                  "report": report.relative_to(run_dir).as_posix()}  # fmt: skip
    publish(run_dir, evaluation)
    log(f"wrote {report}")


def _value(r: dict | None) -> float | None:
    if r is None or r.get("unavailable") is not None or r.get("value") is None:
        return None
    return score_value(MetricResult(**r))


def _plain(o):
    """JSON for numpy values in metric details."""
    return o.tolist() if hasattr(o, "tolist") else str(o)
