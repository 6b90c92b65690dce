"""The records every stage passes on: a :class:`Unit` (one footage file, its fate and what was learnt about it) and
a :class:`Clip` (one training clip cut from it).

They are written as JSON in ``DATASET_DIR/.work/units/`` and ``.work/units.json`` (keys in field order, optional
fields left out until a stage fills them), and read back by the encode, dataset and report stages.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from hhtune.media import Probe

Fate = Literal["used", "split", "skipped"]


class Skip(ValueError):  # noqa: N818 -- control flow: a skipped file is a report entry, not an error
    """The file is skipped; the message is its reason in the report."""


@dataclass(frozen=True)
class Clip:
    """One training clip: where it was cut from, what is said in it, and its size (one dataset row, no latents)."""

    clip_id: str
    source_file: str  # relative to the footage folder
    start_s: float
    end_s: float
    language: str
    caption: str
    transcript: str
    alignment: str  # Alignment JSON, in the clip's own time
    alignment_method: str
    speech_mask: tuple[float, ...]  # one value per audio latent (25/s)
    mask_source: str
    bucket: str
    width: int
    height: int
    num_frames: int
    speaker: str
    transcript_source: str = "none"  # where its Dialogue lines came from: srt, vtt, txt, asr, or none
    language_source: str = "none"  # metadata, config, script, lingua, characters, whisper (or none)
    language_confidence: float = 0.0  # 1.0 when declared
    has_audio: bool = True  # False: the footage had no audio track (silence encoded, audio loss masked)
    # data config mouth_regions (None when off): the mouth per latent frame, in latent cells (contract.MOUTH_BOXES),
    # and how many video frames had no face
    mouth_boxes: tuple[tuple[int, int, int, int], ...] | None = None
    no_face_frames: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The clip as a JSON object (the mask and the boxes as lists; the mouth fields left out when not searched)."""
        data = {**asdict(self), "speech_mask": list(self.speech_mask)}
        if self.mouth_boxes is None:
            return {k: v for k, v in data.items() if k not in ("mouth_boxes", "no_face_frames")}
        return {**data, "mouth_boxes": [list(b) for b in self.mouth_boxes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Clip:
        boxes = data.get("mouth_boxes")
        return cls(**{**data, "speech_mask": tuple(data["speech_mask"]),
                      "mouth_boxes": None if boxes is None else tuple(tuple(b) for b in boxes)})  # fmt: skip


@dataclass
class Unit:
    """One footage file: its fate (``used``, ``split`` or ``skipped``, with the reason), its clips, notes for the
    report, and what the stages found out. A field left ``None`` was never reached (the file was skipped before)."""

    file: str  # relative to the footage folder
    fate: Fate = "skipped"
    reason: str = ""
    clips: list[Clip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs: str | None = None  # fingerprint of what the unit was made from (file, sidecars, metadata row, settings)
    probe: Probe | None = None
    transcript_source: str | None = None  # "sidecar NAME", "asr" or "none"
    kind: str | None = None  # speech, speech without transcript, ambient (music, sound), silent video
    language: str | None = None
    language_source: str | None = None  # see Clip.language_source
    language_confidence: float | None = None
    alignment_method: str | None = None
    alignment_confidence: float | None = None
    vad: str | None = None  # what found the speech: "silero" or "energy"
    speech_seconds: float | None = None
    timeline: list[dict] | None = None  # every second accounted for: see accounting.timeline
    speech_coverage: dict[str, float] | None = None
    bucket: str | None = None

    @property
    def duration(self) -> float:
        """Seconds of footage (0 when the file could not be probed)."""
        return float(self.probe.duration) if self.probe is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        """The unit as a JSON object: fields in order, those never filled left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "clips":
                value = [c.to_json() for c in value]
            elif f.name == "probe" and value is not None:
                value = asdict(value)
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unit:
        probe = data.get("probe")
        return cls(**{**data, "clips": [Clip.from_json(c) for c in data.get("clips", [])],
                      "probe": Probe(**probe) if probe is not None else None})  # fmt: skip


def unit_name(rel: str) -> str:
    """File name of a unit: stable across runs, unique per source file."""
    return hashlib.sha1(rel.encode()).hexdigest()[:12] + ".json"


__all__ = ["Clip", "Fate", "Skip", "Unit", "unit_name"]
