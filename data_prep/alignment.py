"""Stages 3-4 for a whole file: the transcript's language checked, G2P per cue, and each cue aligned to the audio.

One code path for ``data_prep build`` and ``data_prep align``: both call :func:`check_language` and
:func:`align_transcript`, so a file aligned on its own gets the words the build would cut clips from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hhtune.contract import SPEECH_SAMPLE_RATE as SPEECH_RATE
from hhtune.speech.align import Alignment, PhonemeRecognizer, align
from hhtune.speech.g2p import phonemize
from hhtune.speech.vad import energy_activity

from .checks import UNUSABLE_TRANSCRIPT, script_mismatch, too_long
from .language import Detected, detect_text_language
from .segment import shift
from .transcripts import Segment, Transcript
from .units import Skip

CUE_PAD = 0.3  # seconds of air the aligner may look at around a cue
VAD_HOP = 0.04  # seconds per voice-activity decision


@dataclass
class Speech:
    """The aligned speech of a whole file: words, phonemes, and which transcript line each word came from."""

    alignment: Alignment
    lines: list[str] = field(default_factory=list)  # transcript text per cue
    word_line: list[int] = field(default_factory=list)  # cue index per aligned word
    line_source: list[str] = field(default_factory=list)  # where each line came from: srt, vtt, txt, asr
    end: float = 0.0  # clips may not go past this (the end of the transcribed part)

    def extend(self, other: Speech) -> None:
        """Append ``other``'s words, phonemes and lines (its cue indices moved past this one's)."""
        self.alignment.words += other.alignment.words
        self.alignment.phonemes += other.alignment.phonemes
        self.word_line += [len(self.lines) + i for i in other.word_line]
        self.lines += other.lines
        self.line_source += other.line_source


def check_language(text: str, declared: Detected, mono16k: np.ndarray, notes: list[str]) -> Detected:
    """The language to align ``text`` in: the declared one, or the one found in the text (script, then
    :func:`data_prep.language.detect_text_language`) when none is declared.

    Raises :class:`Skip` when the audio is silent under a transcript or the script does not fit the language.
    """
    if text and not energy_activity(mono16k, SPEECH_RATE, VAD_HOP).any():
        raise Skip("the transcript claims speech but the audio is silent")
    if text and declared.language == "unknown":
        found = detect_text_language(text)
        if found.language != "unknown":
            notes.append(f"no language declared: {found.language!r} found in the transcript "
                         f"({found.method}, confidence {found.confidence:.2f})")  # fmt: skip
            declared = found
        else:
            notes.append(UNUSABLE_TRANSCRIPT)
    if text and declared.language != "unknown" and (why := script_mismatch(text, declared.language)):
        raise Skip(why)
    return declared


@functools.lru_cache(maxsize=2)
def _recognizer(path: str) -> PhonemeRecognizer:
    """One acoustic model per worker process."""
    return PhonemeRecognizer(path)


def file_cues(transcript: Transcript, duration: float, notes: list[str]) -> list[Segment]:
    """Timed cues inside the file (later ones dropped, overlong ones trimmed), or the untimed text as one cue."""
    segs = [s for s in transcript.segments if s.text.strip()]
    if not any(s.start is not None for s in segs):
        text = " ".join(s.text for s in segs).strip()
        return [Segment(0.0, duration, text)] if text else []
    timed = [s for s in segs if s.start is not None]
    inside = [s for s in timed if s.start < duration - 0.05]
    if not inside:
        raise Skip(f"the transcript is longer than the clip: every cue starts after its end ({duration:.2f} s)")
    if len(inside) < len(timed):
        notes.append(f"{len(timed) - len(inside)} transcript cue(s) start after the clip ends "
                     f"({duration:.2f} s): dropped")
    out = []
    for s in inside:
        end = s.end if s.end is not None and s.end > s.start else duration
        if end > duration + 0.25:
            notes.append(f"cue {s.start:.2f}-{end:.2f} s runs past the end ({duration:.2f} s): trimmed")
        out.append(Segment(s.start, min(end, duration), s.text))
    return out


def align_transcript(mono16k: np.ndarray, transcript: Transcript, language: str, duration: float,
                     acoustic_model: str | Path | None, notes: list[str]) -> Speech:  # fmt: skip
    """Every cue phonemised and aligned to the 16 kHz audio around it (``CUE_PAD`` seconds of air either side,
    never into the neighbouring cues); CTC with ``acoustic_model``, else model-free DTW.

    Raises :class:`Skip` when G2P fails or a cue holds more phonemes than its time can (``checks.too_long``).
    """
    if not transcript.text() or language == "unknown":
        return Speech(Alignment("none"), end=duration)
    cues = file_cues(transcript, duration, notes)
    recognizer = _recognizer(str(acoustic_model)) if acoustic_model else None
    out = Speech(Alignment("none"), end=duration)
    methods = set()
    for ci, cue in enumerate(cues):
        try:
            words = phonemize(cue.text, language)
        except Exception as e:  # a missing G2P backend names what to install; the build goes on
            raise Skip(f"G2P failed for {language!r}: {type(e).__name__}: {e}") from e
        if why := too_long(sum(len(w.phonemes) for w in words), cue.end - cue.start):
            raise Skip(why)
        # a little air around the cue (subtitle times are rarely exact), never into the neighbouring cues
        lo = max(cue.start - CUE_PAD, cues[ci - 1].end if ci else 0.0)
        hi = min(cue.end + CUE_PAD, cues[ci + 1].start if ci + 1 < len(cues) else duration)
        part = shift(align(mono16k[int(lo * SPEECH_RATE) : int(hi * SPEECH_RATE)], words, recognizer), lo)
        methods.add(part.method)
        out.alignment.notes += [f"cue {ci + 1}: {n}" for n in part.notes]
        out.alignment.words += part.words
        out.alignment.phonemes += part.phonemes
        out.word_line += [ci] * len(part.words)
        out.lines.append(cue.text.strip())
    methods.discard("none")
    out.alignment.method = "none" if not methods else "+".join(sorted(methods))
    if not out.alignment.words:
        notes.append("no word could be aligned (no speech found where the transcript says)")
    return out


__all__ = ["CUE_PAD", "VAD_HOP", "Speech", "align_transcript", "check_language", "file_cues"]
