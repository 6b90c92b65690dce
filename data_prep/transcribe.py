"""Stage 2 for one file: its transcript and the language so far.

The transcript sidecar (``.srt``, ``.vtt``, ``.txt``) when there is one; else, with ``asr_model``, Whisper
(:mod:`data_prep.asr`) over the stretches where speech was heard, its language found by Whisper's language ID
when none is declared; else none. With ``untranscribed: asr``, speech that a sidecar leaves out is transcribed too.
Every ASR cue Whisper was unsure of is a note in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from hhtune.contract import SPEECH_SAMPLE_RATE as SPEECH_RATE
from hhtune.speech.align import Interval

from .alignment import VAD_HOP, Speech, align_transcript
from .asr import AsrResult, detect_audio_language, transcribe_stretches
from .config import DataConfig
from .language import Detected, chinese_variety
from .segment import runs
from .transcripts import Transcript, find_sidecar, parse_transcript
from .units import Skip, Unit


def file_transcript(path: Path, declared: Detected, mono16k: np.ndarray, heard: Callable[[], np.ndarray],
                cfg: DataConfig, unit: Unit) -> tuple[Transcript, Detected]:  # fmt: skip
    """Stage 2: the transcript sidecar, else Whisper where speech is heard (when ``asr_model`` is set), else none
    (speech is untranscribed); and the language so far (Whisper's language ID when the declared one is unknown)."""
    side = find_sidecar(path)
    if side is not None:
        try:
            t = parse_transcript(side)
        except Exception as e:  # whatever the parser raises, the file's fate names the sidecar and the problem
            raise Skip(f"transcript {side.name} could not be read: {e}") from e
        unit.transcript_source = f"sidecar {side.name}"
        return t, declared
    if cfg.asr_model:
        unit.transcript_source = "asr"
        stretches = runs(heard().tolist(), VAD_HOP)
        if not stretches:
            unit.notes.append("no speech heard: nothing for the ASR to transcribe")
            return Transcript(source="asr"), declared
        found = _whisper_language(mono16k, stretches, declared, cfg, unit)
        asr = transcribe_stretches(mono16k, stretches, found.language, cfg.asr_model)
        _note_asr(asr, f"transcript from local ASR ({cfg.asr_model})", unit.notes)
        if found.language == "zh" and found.method == "whisper":  # Whisper before large-v3 hears Cantonese as zh
            variety = chinese_variety(asr.transcript.text(), found.confidence)
            found = Detected(variety.language, found.confidence, "whisper+characters")
        return asr.transcript, found
    unit.transcript_source = "none"
    unit.notes.append("no transcript sidecar and no asr_model: its speech is handled as untranscribed "
                      f"({cfg.untranscribed})")
    return Transcript(), declared


def _whisper_language(mono16k: np.ndarray, stretches: list[Interval], declared: Detected, cfg: DataConfig,
                      unit: Unit) -> Detected:  # fmt: skip
    """The declared language, else Whisper's language ID over the heard speech (restricted to the seven)."""
    if declared.language != "unknown":
        return declared
    found = detect_audio_language(mono16k, stretches, cfg.asr_model)
    unit.notes.append(f"no language declared: Whisper hears {found.language!r} (confidence {found.confidence:.2f})")
    return found


def _note_asr(asr: AsrResult, what: str, notes: list[str]) -> None:
    """Say what the ASR made, and flag each cue it was unsure of (the report lists the notes)."""
    notes.append(f"{what}: {len(asr.transcript.segments)} cue(s)")
    for seg, conf in asr.low_confidence():
        notes.append(f"low-confidence ASR ({conf:.2f}) at {seg.start:.2f}-{seg.end:.2f} s: {seg.text!r}: "
                     "check it, or give a transcript sidecar")  # fmt: skip


def asr_untranscribed(mono16k: np.ndarray, loose: list[Interval], language: str, cfg: DataConfig, unit: Unit) -> Speech:
    """Transcribe each stretch of untranscribed speech with Whisper and align it like a cue."""
    if language == "unknown":
        language = _whisper_language(mono16k, loose, Detected(language, 0.0, "none"), cfg, unit).language
    asr = transcribe_stretches(mono16k, loose, language, cfg.asr_model)
    _note_asr(asr, f"untranscribed speech transcribed by the local ASR ({cfg.asr_model})", unit.notes)
    out = align_transcript(mono16k, asr.transcript, language, len(mono16k) / SPEECH_RATE, cfg.acoustic_model,
                           unit.notes)  # fmt: skip
    out.line_source = ["asr"] * len(out.lines)
    return out


__all__ = ["asr_untranscribed", "file_transcript"]
