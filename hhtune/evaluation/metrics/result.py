"""What every metric returns: a value, or the one sentence why it was not measured."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetricResult:
    """One metric over a set of clips."""

    name: str  # e.g. "voice_similarity"
    value: float | None  # None when not measured
    details: dict = field(default_factory=dict)  # JSON-serialisable extras (offsets, shares, counts)
    unavailable: str | None = None  # why not measured (missing optional package or model); never faked


def unavailable(name: str, why: str) -> MetricResult:
    """A metric that could not be measured, and why."""
    return MetricResult(name=name, value=None, details={}, unavailable=why)
