"""What every part of one evaluation shares: the prompts' features, the decoders, the background scorer; and the
end of every evaluation: metrics of each variant, the checkpoint to ship, eval.json, the report, the publication."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters import check_compatible
from ..adapters.provenance import read_run_adapter
from ..encoders import EncoderPaths
from ..io import atomic_write_text
from ..recipe import Recipe
from ..sampling.generate import held_on
from ..sampling.super_resolution import SrStage
from ..training.outputs import encoder_paths
from .background import BackgroundScorer
from .clips import AVClip
from .curves import plot_curves
from .metrics import DESCRIPTIONS, MetricResult
from .metrics import drift as drift_metric
from .plan import Checkpoint, EvalPlan
from .publish import publish
from .report import write_report
from .sampling import Decoders, Features, Sample, SampleSettings, sample_variant, super_resolve_samples
from .scoring import METRICS, choose_checkpoint, result_dict, score_samples, score_value

Samples = dict[str, tuple[list[Sample], list[Sample]]]  # variant label -> (brand samples, drift samples)


@dataclass
class Session:
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

    def super_resolve(self, samples: Samples, first_stage: list[torch.nn.Module]) -> Samples:
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


def check_adapters(chosen: tuple[Checkpoint, ...], model: torch.nn.Module, check_base: bool) -> None:
    """Refuse, before any sampling, an adapter whose modules, shapes or base model do not fit ``model``."""
    for c in chosen:
        check_compatible(read_run_adapter(c.path), model, str(c.path), check_base)


def evaluation_encoders(recipe: Recipe, data, given: Path | None) -> EncoderPaths:
    """The VAEs and text encoder: ``given`` (a folder of the three), else the run's (validation.encoders or the
    dataset's manifest)."""
    if given is not None:
        return EncoderPaths(video_vae=given / "video_vae", audio_vae=given / "audio_vae",
                            text_encoder=given / "text_encoder")
    return encoder_paths(recipe, data)


def judge(session: Session, samples: Samples) -> tuple[dict, dict, Checkpoint, dict]:
    """``(metrics by variant, drift by checkpoint, the checkpoint to ship, why)`` of every variant's samples."""
    plan = session.plan
    metrics = {k: session.score(brand_s) for k, (brand_s, _) in samples.items()}
    drifts = {c.label: drift_metric([s.clip for s in samples[c.label][1]], [s.clip for s in samples["base"][1]])
              for c in plan.checkpoints}  # fmt: skip
    best_label, why = choose_checkpoint({c.label: metrics[c.label] for c in plan.checkpoints})
    return metrics, drifts, next(c for c in plan.checkpoints if c.label == best_label), why


def finish(session: Session, samples: Samples, judged: tuple, transfer: dict, run_dir: Path,
           super_resolution: dict | None) -> dict:  # fmt: skip
    """Write ``eval.json``, the curves and ``report.html``, publish the recommendation; return eval.json's content."""
    metrics, drifts, best, why = judged
    result = _result(session.plan, session.out, samples, metrics, drifts, best, why, transfer)
    result["super_resolution"] = super_resolution
    _write(result, session.out, run_dir, session.log)
    return result


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
