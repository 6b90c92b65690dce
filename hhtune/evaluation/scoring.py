"""The metrics of each sampled variant, and which checkpoint to ship.

Every metric comes from :mod:`hhtune.evaluation.metrics`; one that cannot run (its optional
model is not installed, or the training footage is not on disk) comes back with ``unavailable``
set, and the others still run. Nothing here guesses a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from . import metrics as m
from .clips import AVClip
from .metrics import MetricResult

# Which way is better for each metric the checkpoint choice and the strength tolerance use.
HIGHER_IS_BETTER = {"voice_similarity": True, "speech_quality": True, "lip_sync": True, "face_similarity": True,
                    "look_distance": False}  # fmt: skip
QUALITY_METRICS = ("voice_similarity", "lip_sync", "speech_quality")  # what the recommended strength must keep
# Scored on each variant's samples; each is the function of that name in hhtune.evaluation.metrics.
METRICS = ("speech_quality", "lip_sync", "voice_similarity", "face_similarity", "look_distance")


def result_dict(r: MetricResult) -> dict:
    """A :class:`MetricResult` as plain JSON."""
    return asdict(r)


def score_value(r: MetricResult) -> float | None:
    """The number a metric is compared by: lip-sync by its confidence, the others by their value."""
    if r.unavailable is not None or r.value is None:
        return None
    if r.name == "lip_sync" and isinstance(r.details.get("confidence"), (int, float)):
        return float(r.details["confidence"])
    return float(r.value)


def _unavailable(name: str, why: str) -> MetricResult:
    return MetricResult(name=name, value=None, details={}, unavailable=why)


def _lip_sync_all(clips: Sequence[AVClip]) -> MetricResult:
    """:func:`~hhtune.evaluation.metrics.lip_sync` of every clip, averaged (per-clip results in the details)."""
    each = [m.lip_sync(c) for c in clips]
    ok = [r for r in each if r.unavailable is None and r.value is not None]
    if not ok:
        return _unavailable("lip_sync", each[0].unavailable if each else "no clips")
    conf = [r.details["confidence"] for r in ok if isinstance(r.details.get("confidence"), (int, float))]
    details = {"clips": [asdict(r) for r in each], "measured_clips": len(ok)}
    if conf:
        details["confidence"] = float(np.mean(conf))
    return MetricResult("lip_sync", float(np.mean([r.value for r in ok])), details)


def score_samples(clips: Sequence[AVClip], references: Sequence[AVClip], *, no_references: str | None = None,
                  names: Sequence[str] = METRICS) -> dict[str, MetricResult]:  # fmt: skip
    """The metrics ``names`` (default: voice, speech quality, lip-sync, face and look) of ``clips``, against the
    training ``references``.

    Without references (``no_references`` says why) the metrics that compare with the footage
    are reported as unavailable.
    """
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
    out = {}
    for name in names:
        if name == "speech_quality":
            out[name] = m.speech_quality(list(clips))
        elif name == "lip_sync":
            out[name] = _lip_sync_all(clips)
        elif references:
            out[name] = getattr(m, name)(list(clips), list(references))  # the others compare with the footage
        else:
            out[name] = _unavailable(name, no_references or "no training footage")
    return out


def quality_values(results: dict[str, MetricResult]) -> dict[str, float | None]:
    """The :data:`QUALITY_METRICS` of ``results`` as comparable numbers (``None``: not measured)."""
    return {k: score_value(results[k]) if k in results else None for k in QUALITY_METRICS}


def choose_checkpoint(per_checkpoint: dict[str, dict[str, MetricResult]]) -> tuple[str, dict]:
    """The label of the checkpoint to ship, and why.

    Each measured metric of :data:`HIGHER_IS_BETTER` is scaled to 0 (worst checkpoint) .. 1 (best);
    the checkpoint with the highest mean wins, the later one on a tie. With nothing measured, the last one.
    """
    labels = list(per_checkpoint)
    if not labels:
        raise ValueError("no checkpoints to choose from")
    totals = {lab: [] for lab in labels}
    used = []
    for name, higher in HIGHER_IS_BETTER.items():
        values = {lab: score_value(per_checkpoint[lab][name]) for lab in labels if name in per_checkpoint[lab]}
        values = {k: v for k, v in values.items() if v is not None}
        if len(values) != len(labels):
            continue
        used.append(name)
        lo, hi = min(values.values()), max(values.values())
        for lab, v in values.items():
            scaled = 0.5 if hi == lo else (v - lo) / (hi - lo)
            totals[lab].append(scaled if higher else 1 - scaled)
    if not used:
        return labels[-1], {"rule": "no metric was measured on every checkpoint: the last checkpoint", "scores": {}}
    scores = {lab: float(np.mean(v)) for lab, v in totals.items()}
    best = max(reversed(labels), key=lambda lab: scores[lab])  # reversed: the later checkpoint wins a tie
    return best, {"rule": "highest mean of the metrics scaled 0 (worst checkpoint) to 1 (best)", "metrics": used,
                  "scores": scores}  # fmt: skip
