"""Transfer of a base-trained adapter to the distilled model, and the strength to use there.

The reference for what the adapter learned is the base model + adapter sampled with the base
sampler (32 UniPC steps with CFG). The distilled model + adapter (8 steps) is compared with that
reference at each strength; next to it stands the gap the two models have without any adapter
(distilled vs base), the floor no strength can go below. The recommended strength is the one with
the smallest gap among those that keep voice, lip-sync and speech quality within tolerance of the
best strength.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .sampling import Sample

DEFAULT_TOLERANCE = 0.1  # a quality metric may fall this share of the best value's magnitude below the best


def latent_gap(samples: Sequence[Sample], reference: Sequence[Sample]) -> float:
    """Mean relative distance of ``samples`` to ``reference`` paired by (prompt, seed), video and audio latents
    averaged.

    0 means the same clips; 1 means a distance as large as the reference itself.
    """
    ref = {(s.prompt, s.seed): s for s in reference}
    gaps = []
    for s in samples:
        r = ref.get((s.prompt, s.seed))
        if r is None:
            raise ValueError(f"no reference sample for prompt {s.prompt} seed {s.seed}")
        for a, b in ((s.video_latents, r.video_latents), (s.audio_latents, r.audio_latents)):
            a, b = a.double(), b.double()
            gaps.append(float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12)))
    if not gaps:
        raise ValueError("no samples to compare")
    return sum(gaps) / len(gaps)


def recommend_strength(gaps: dict[float, float], quality: dict[float, dict[str, float | None]],
                       tolerance: float = DEFAULT_TOLERANCE) -> float:  # fmt: skip
    """The strength with the smallest gap among those whose quality metrics are all within tolerance of the best.

    ``quality[strength]`` maps each quality metric (higher is better) to its value, ``None`` when
    not measured; a metric measured at no strength does not constrain. Ties go to the lower strength.
    """
    if not gaps:
        raise ValueError("no strengths measured")
    keep = set(gaps)
    names = {k for q in quality.values() for k in q}
    for name in sorted(names):
        values = {s: quality.get(s, {}).get(name) for s in gaps}
        measured = {s: v for s, v in values.items() if v is not None}
        if not measured:
            continue
        best = max(measured.values())
        floor = best - tolerance * max(abs(best), 1e-12)
        keep &= {s for s, v in measured.items() if v >= floor}
    candidates = sorted(keep) or sorted(gaps)
    return min(candidates, key=lambda s: (gaps[s], s))


@dataclass
class TransferResult:
    """Gaps per strength, the no-adapter gap, quality per strength and the recommendation."""

    strengths: list[float]
    gaps: dict[float, float]
    no_adapter_gap: float
    quality: dict[float, dict[str, float | None]] = field(default_factory=dict)
    recommended_strength: float | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def as_json(self) -> dict:
        """Plain JSON (strengths as string keys)."""
        return {"strengths": self.strengths, "gaps": {str(k): v for k, v in self.gaps.items()},
                "no_adapter_gap": self.no_adapter_gap, "quality": {str(k): v for k, v in self.quality.items()},
                "quality_names": sorted({n for q in self.quality.values() for n in q}),
                "recommended_strength": self.recommended_strength, "tolerance": self.tolerance,
                "reference": "base model + adapter at strength 1, 32 UniPC steps with CFG",
                "measured": "distilled model + adapter at each strength, 8 steps"}  # fmt: skip


def measure_transfer(sample: Callable[[str, str, float | None], list[Sample]], strengths: Sequence[float],
                     quality: Callable[[list[Sample]], dict[str, float | None]] | None = None,
                     tolerance: float = DEFAULT_TOLERANCE) -> TransferResult:  # fmt: skip
    """Measure the gaps and recommend a strength.

    ``sample(model, sampler, strength)`` samples the prompts at the fixed seeds with ``model``
    ``"base"`` or ``"distilled"``, ``sampler`` ``"base"`` (32 steps, CFG) or ``"distilled"`` (8 steps),
    and the adapter at ``strength`` (``None``: no adapter). ``quality(samples)`` gives the quality
    metrics of a strength's samples (default: none measured).
    """
    reference = sample("base", "base", 1.0)  # the base model's samples first: a caller may free it afterwards
    base_plain = sample("base", "base", None)
    no_adapter = latent_gap(sample("distilled", "distilled", None), base_plain)
    gaps: dict[float, float] = {}
    measured: dict[float, dict[str, float | None]] = {}
    for s in strengths:
        samples = sample("distilled", "distilled", s)
        gaps[s] = latent_gap(samples, reference)
        measured[s] = quality(samples) if quality else {}
    return TransferResult(list(strengths), gaps, no_adapter, measured, recommend_strength(gaps, measured, tolerance),
                          tolerance)  # fmt: skip
