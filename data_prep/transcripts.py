"""Transcript sidecars (SRT, WebVTT, plain text); Whisper transcripts are made by :mod:`data_prep.asr`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TRANSCRIPT_SUFFIXES = (".srt", ".vtt", ".txt")  # sidecars next to a footage file, in the order they are looked for
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_TAG = re.compile(r"<[^>]+>|\{[^}]+\}")


class TranscriptError(ValueError):
    """A transcript that cannot be read, with the file and the line."""


@dataclass
class Segment:
    """A stretch of speech; times in seconds (``None`` in plain text)."""

    start: float | None
    end: float | None
    text: str


@dataclass
class Transcript:
    """What was said in a clip, and where it came from."""

    segments: list[Segment] = field(default_factory=list)
    source: str = "none"  # srt | vtt | txt | asr | none

    def text(self) -> str:
        """All segments joined by spaces."""
        return " ".join(s.text for s in self.segments if s.text).strip()


def _seconds(m: re.Match) -> float:
    h, mnt, s, ms = m.groups()
    return int(h or 0) * 3600 + int(mnt) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def _clean(line: str) -> str:
    return re.sub(r"\s+", " ", _TAG.sub("", line)).strip()


def _cues(text: str, path: Path, kind: str) -> list[Segment]:
    segments: list[Segment] = []
    blocks = re.split(r"\n\s*\n", text)
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ln.strip()]
        timing = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing is None:
            continue
        left, _, right = lines[timing].partition("-->")
        a, b = _TIME.search(left), _TIME.search(right)
        if not (a and b):
            raise TranscriptError(f"{path}: bad cue timing {lines[timing]!r}")
        start, end = _seconds(a), _seconds(b)
        if end < start:
            raise TranscriptError(f"{path}: cue ends before it starts: {lines[timing]!r}")
        words = _clean(" ".join(lines[timing + 1 :]))
        if words:
            segments.append(Segment(start, end, words))
    if not segments and text.strip():
        raise TranscriptError(f"{path}: no {kind.upper()} cues found (expected 'start --> end' lines)")
    return segments


def parse_transcript(path: str | Path) -> Transcript:
    """Read an ``.srt``, ``.vtt`` or ``.txt`` transcript (BOM, CRLF and styling tags tolerated)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TranscriptError(f"{path}: not UTF-8 text ({e})") from e
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kind = path.suffix.lower().lstrip(".")
    if kind == "srt":
        return Transcript(_cues(text, path, kind), "srt")
    if kind == "vtt":
        if not text.lstrip().startswith("WEBVTT"):
            raise TranscriptError(f"{path}: a WebVTT file must start with 'WEBVTT'")
        return Transcript(_cues(text.split("\n", 1)[1] if "\n" in text else "", path, kind), "vtt")
    if kind == "txt":
        body = _clean(text)
        return Transcript([Segment(None, None, body)] if body else [], "txt")
    raise TranscriptError(f"{path}: unsupported transcript type {path.suffix!r}; use .srt, .vtt or .txt")


def find_sidecar(path: Path) -> Path | None:
    """The transcript sidecar of a footage file (same stem, first of :data:`TRANSCRIPT_SUFFIXES`), if any."""
    return next((p for s in TRANSCRIPT_SUFFIXES if (p := path.with_name(path.stem + s)).is_file()), None)
