"""Evaluating a run that trains a super-resolution stage (``model.variant`` sr_540p or sr_1080p).

Its checkpoints adapt the SR model, so they are judged on what that stage delivers: the first stage (``--first-stage``,
with its own adapter if the team ships one) renders every brand and drift prompt once at the base size; then the SR
model without adapter (the control) and with each checkpoint refines those same clips, each continuing the noise
generator of its first stage as ``python -m hhtune.sample --sr`` does. Metrics, drift and the checkpoint choice read
the refined clips. There is no transfer: the SR stage has no distilled counterpart, and its adapter applies at
strength 1.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from ..adapters import parse_spec
from ..recipe import Recipe
from ..sampling.generate import NEGATIVE_PROMPT, encode_prompts, held_on
from ..sampling.super_resolution import SrStage, load_stage_model
from ..training.data import TrainingDataset
from ..training.trainer import build_model
from .background import BackgroundScorer
from .plan import EvalPlan
from .references import training_references
from .sampling import Decoders, Sample, SampleSettings, sample_variant, super_resolve_samples, with_adapter
from .scoring import METRICS
from .session import Samples, Session, check_adapters, evaluation_encoders, finish, judge


def evaluate_sr_run(recipe: Recipe, plan: EvalPlan, *, encoders: Path | None, device: torch.device, workers: int,
                    log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Evaluate an SR run's checkpoints on the SR stage over ``plan.first_stage``'s clips; write and publish as
    :func:`~.runner.evaluate_run` does. Returns eval.json's content."""
    first_spec, first_adapter = plan.first_stage
    with BackgroundScorer(workers) as scorer:  # started first: its workers load their models while the DiTs load
        data = TrainingDataset(recipe.data.dataset)
        enc = evaluation_encoders(recipe, data, encoders)
        sr_model = build_model(recipe.model, "cpu").eval()  # on the host until its own steps
        check_adapters(plan.checkpoints, sr_model, True)
        first = load_stage_model(first_spec, device, adapters=[parse_spec(first_adapter)] if first_adapter else [],
                                 compute_dtype=recipe.model.compute_dtype)  # fmt: skip
        feats = encode_prompts([*plan.prompts, *plan.drift_prompts, NEGATIVE_PROMPT], enc.text_encoder, device)
        v = recipe.validation
        session = Session(plan, Decoders(enc, device), SampleSettings(v.seconds, v.aspect, v.base_resolution),
                          feats[: len(plan.prompts)], feats[len(plan.prompts) : -1], feats[-1],
                          *training_references(data.ds, data.manifest), plan.run_dir / "eval", log, scorer)  # fmt: skip
        for ref in session.references:  # their voice and face, compared with every variant's
            scorer.submit(ref, ("voice_similarity", "face_similarity"))
        log(f"first stage: {len(plan.prompts)} prompts + {len(plan.drift_prompts)} drift prompts x "
            f"{len(plan.seeds)} seeds")
        kw = dict(decoders=session.decoders, settings=session.settings, decode=False)
        base_clips = (sample_variant(first, "first", session.brand, plan.seeds, **kw),
                      sample_variant(first, "first", session.drift, plan.seeds, **kw))  # fmt: skip
        del first  # the SR model alone from here on
        samples: Samples = {}
        for label, adapter in [("base", None), *[(c.label, c.path) for c in plan.checkpoints]]:
            log(f"{plan.sr.resolution} super-resolution, {label}")
            with with_adapter(sr_model, adapter, 1.0) if adapter else nullcontext(sr_model) as m, held_on(m, device):
                samples[label] = _refine(session, SrStage(plan.sr.resolution, m), label, *base_clips)
        judged = judge(session, samples)
    transfer = {"unavailable": f"the run trains the {recipe.model.variant} stage, which has no distilled "
                               "counterpart: its adapter applies at strength 1 on the SR model"}  # fmt: skip
    sr_json = {"resolution": plan.sr.resolution, "model": plan.sr.model, "adapter": None, "trained": True,
               "first_stage": first_spec, "first_stage_adapter": first_adapter}  # fmt: skip
    return finish(session, samples, judged, transfer, plan.run_dir, sr_json)


def _refine(session: Session, stage: SrStage, label: str, brand: list[Sample],
            drift: list[Sample]) -> tuple[list[Sample], list[Sample]]:  # fmt: skip
    """``label``'s brand clips (mp4s, scored in the background) and drift clips: the first stage's, refined."""
    kw = dict(decoders=session.decoders, settings=session.settings, device=session.decoders.device)
    return (super_resolve_samples([replace(s, variant=label) for s in brand], stage, session.brand,
                                  out_dir=session.out / "videos", on_clip=session.queue(METRICS), **kw),
            super_resolve_samples([replace(s, variant=label) for s in drift], stage, session.drift, **kw))  # fmt: skip
