"""A stand-in for hhtune.evaluation.clips / .metrics while they are written on another branch (tests only).

Installed by conftest.py only when the real modules cannot be imported; it follows their
interface exactly and computes simple, deterministic numbers (or reports a metric unavailable)
so the orchestration can be tested. It is never used once the real modules exist.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AVClip:
    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    label: str = ""


def read_av_clip(path) -> AVClip:
    raise FileNotFoundError(path)


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float | None
    details: dict = field(default_factory=dict)
    unavailable: str | None = None


DESCRIPTIONS = {n: f"{n} (fallback)" for n in ("voice_similarity", "speech_quality", "lip_sync", "face_similarity",
                                               "look_distance", "drift")}  # fmt: skip


def available_metrics():
    return {n: None for n in DESCRIPTIONS} | {"face_similarity": "no face model in the fallback"}


def voice_similarity(samples, references):
    return MetricResult("voice_similarity", float(np.mean([np.abs(s.audio).mean() for s in samples])), {})


def speech_quality(samples):
    return MetricResult("speech_quality", float(np.mean([np.abs(s.audio).std() for s in samples])), {})


def lip_sync(clip):
    return MetricResult("lip_sync", 0.0, {"confidence": float(clip.frames.mean() / 255)})


def face_similarity(samples, references):
    return MetricResult("face_similarity", None, {}, unavailable="no face model in the fallback")


def look_distance(samples, references, latents=None):
    return MetricResult("look_distance", float(np.mean([s.frames.mean() for s in samples])), {})


def drift(adapter_samples, base_samples):
    d = [np.abs(a.frames.astype(float) - b.frames.astype(float)).mean() for a, b in zip(adapter_samples, base_samples)]
    return MetricResult("drift", float(np.mean(d)), {})


def install() -> None:
    """Register this module as hhtune.evaluation.clips and hhtune.evaluation.metrics."""
    me = sys.modules[__name__]
    for name in ("hhtune.evaluation.clips", "hhtune.evaluation.metrics"):
        mod = types.ModuleType(name)
        mod.__dict__.update({k: getattr(me, k) for k in dir(me) if not k.startswith("_")})
        sys.modules[name] = mod
