"""Stages 1-7 for one footage file: probe, decode, transcript, G2P, alignment, cutting (and the mouth in each
frame), captions, buckets.

:func:`prepare_file` drives one function per stage (``_probe``, ``_transcript``, ``_align``, ``_segment``, ``_cut``,
``_caption``), each filling in the file's :class:`~data_prep.units.Unit`. It runs in a worker process. Its result,
the unit, is written atomically to
``DATASET_DIR/.work/units/``; the decoded clips go to ``.work/clips/`` the same way,
so a killed build resumes by skipping finished units and never reads half a file.
A unit remembers a fingerprint of its inputs (the file, its sidecars, its metadata row,
the settings): when any of them changes, the file is done again.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hhtune.contract import AUDIO_SAMPLE_RATE as AUDIO_RATE
from hhtune.contract import FPS, audio_samples_for, bucket_size, frames_for, nearest_bucket
from hhtune.contract import SPEECH_SAMPLE_RATE as SPEECH_RATE
from hhtune.io import atomic_path, atomic_write_text
from hhtune.media import Audio, FrameReader, MediaError, Probe, decode_audio, probe, resize_crop
from hhtune.speech.align import Alignment, Interval
from hhtune.speech.languages import normalise_language
from hhtune.speech.vad import speech_activity, speech_near

from .accounting import UNTRANSCRIBED, coverage, timeline, whole_file
from .alignment import VAD_HOP, Speech, align_transcript, check_language
from .captions import build_caption, join_words
from .config import DataConfig
from .language import Detected
from .mouth import mouth_regions
from .segment import Plan, PlannedClip, fixed_clips, plan, runs, window
from .transcribe import asr_untranscribed, file_transcript
from .transcripts import TRANSCRIPT_SUFFIXES, Transcript
from .units import Clip, Skip, Unit, unit_name

CAPTION_SUFFIXES = (".caption.txt", ".caption")
METADATA_KEYS = ("file_name", "language", "caption", "speaker", "trigger", "reference_image", "background_sound")


@dataclass(frozen=True)
class _Heard:
    """Where voice-activity detection heard speech: one flag per :data:`VAD_HOP`, and the detector that did."""

    active: np.ndarray
    detector: str  # "silero", or "energy" when Silero is missing


def sidecars(path: Path) -> list[Path]:
    """The transcript and caption sidecars of a footage file that exist (same stem)."""
    return [p for s in (*TRANSCRIPT_SUFFIXES, *CAPTION_SUFFIXES) if (p := path.with_name(path.stem + s)).is_file()]


def input_fingerprint(path: Path, meta: dict, cfg: DataConfig) -> str:
    """Hash of what a unit was made from: the file and its sidecars (size + mtime), the metadata row, the settings."""
    h = hashlib.sha256(cfg.fingerprint().encode())
    h.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    for p in (path, *sidecars(path)):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare_file(path: Path, rel: str, meta: dict, cfg: DataConfig, work: Path) -> Unit:
    """Run stages 1-7 on one file and write its unit; never raises for bad input (the unit says why)."""
    unit = Unit(rel)
    try:
        unit.inputs = input_fingerprint(path, meta, cfg)
        _prepare(path, rel, meta, cfg, work, unit)
        n = len(unit.clips)
        unit.fate = "used" if n == 1 else "split" if n > 1 else "skipped"
        if n > 1:
            unit.reason = f"split into {n} clips"
        elif n == 0 and not unit.reason:
            unit.reason = (f"no clip of {cfg.min_seconds}-{cfg.max_seconds} s fits between word boundaries "
                           f"({unit.duration:.2f} s of footage)")  # fmt: skip
    except (Skip, MediaError, ValueError, OSError) as e:
        unit.reason = str(e)
        unit.clips = []
    except Exception as e:  # an unexpected failure must not stop the build: report it with its trace
        unit.reason = f"internal error: {type(e).__name__}: {e}"
        unit.notes.append(traceback.format_exc(limit=4))
        unit.clips = []
    if unit.fate == "skipped" and not unit.clips and not (unit.timeline and unit.speech_coverage is not None):
        unit.timeline = whole_file(unit.duration, unit.reason)  # not cut: its timeline cannot say more than this
    atomic_write_text(work / "units" / unit_name(rel), json.dumps(unit.to_json(), ensure_ascii=False))
    return unit


def _prepare(path: Path, rel: str, meta: dict, cfg: DataConfig, work: Path, unit: Unit) -> None:
    """The driver: one call per stage, each filling in ``unit``."""
    info, audio, declared = _probe(path, meta, cfg, unit)
    spoken, transcript, found, heard = _listen(path, audio.mono16k, declared, info.duration, cfg, unit)
    language = found.language
    cut = _segment(spoken, transcript, heard.active, audio.mono16k, info.duration, language, cfg, unit)
    bucket = nearest_bucket(info.width, info.height, list(cfg.buckets))
    width, height = bucket_size(bucket, cfg.base_resolution)
    root = path
    for _ in Path(rel).parts:
        root = root.parent
    reference = _reference(root, meta, width, height)
    if not cut.clips:
        return
    unit.bucket = bucket
    reader = FrameReader(path, info, (width, height))
    speaker = meta.get("speaker") or cfg.speaker
    description = meta.get("caption") or _caption_sidecar(path) or ""
    try:
        for k, planned in enumerate(cut.clips):
            clip_id = f"{Path(rel).stem}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}-{k:03d}"
            frames = _cut(reader, audio.stereo, planned, reference, work / "clips" / f"{clip_id}.npz")
            mouth = mouth_regions(frames) if cfg.mouth_regions else None
            clip_align = window(spoken.alignment, planned.start, planned.end)
            mask, mask_source = _speech_mask(clip_align, spoken.alignment.method in ("ctc", "dtw"), heard,
                                             planned.start, planned.frames)  # fmt: skip
            lines, said_by = _clip_lines(spoken, planned.start, planned.end, language)
            unit.clips.append(Clip(
                clip_id=clip_id, source_file=rel, start_s=round(planned.start, 4), end_s=round(planned.end, 4),
                language=language, caption=_caption(description, lines, speaker, language, meta, cfg),
                transcript=" ".join(lines), alignment=clip_align.to_json(),
                alignment_method=clip_align.method if clip_align.words else "none",
                speech_mask=tuple(mask.tolist()), mask_source=mask_source, bucket=bucket, width=width, height=height,
                num_frames=planned.frames, speaker=speaker,
                transcript_source="asr" if "asr" in said_by else transcript.source if said_by else "none",
                language_source=found.method, language_confidence=found.confidence,
                has_audio=info.audio_channels > 0, mouth_boxes=None if mouth is None else mouth.boxes,
                no_face_frames=None if mouth is None else mouth.no_face_frames))  # fmt: skip
    finally:
        reader.close()


def _probe(path: Path, meta: dict, cfg: DataConfig, unit: Unit) -> tuple[Probe, Audio, Detected]:
    """Stage 1: probe and decode (the audio once; both rates are resampled in memory); the declared language."""
    notes = unit.notes
    info = unit.probe = probe(path)
    declared = (Detected(normalise_language(meta["language"]), 1.0, "metadata") if meta.get("language") else
                Detected(cfg.language, 1.0, "config") if cfg.language else Detected("unknown", 0.0, "none"))
    if info.audio_channels == 0:
        if not cfg.keep_silent_video:
            raise Skip("no audio track (keep_silent_video: false)")
        unit.kind = "silent video"
        notes.append("no audio track: its clips train the picture only (silence encoded, audio loss masked)")
        n = int(info.duration * SPEECH_RATE)
        return info, Audio(np.zeros((2, int(info.duration * AUDIO_RATE)), np.float32), np.zeros(n, np.float32)), \
            declared  # fmt: skip
    audio = decode_audio(path)
    if info.audio_rate and info.audio_rate < 16000:
        notes.append(f"low audio sample rate {info.audio_rate} Hz (upsampled to {AUDIO_RATE}; "
                     "it will sound band-limited)")
    if info.audio_channels > 2:
        notes.append(f"{info.audio_channels}-channel audio ({info.audio_layout or 'surround'}) down-mixed to stereo")
    elif info.audio_channels == 1:
        notes.append("mono audio, copied to both stereo channels")
    if info.rotation:
        notes.append(f"rotation {info.rotation} degrees applied ({info.width}x{info.height} as displayed)")
    if info.width % 2 or info.height % 2:
        notes.append(f"odd frame size {info.width}x{info.height}: resized and cropped to the bucket")
    if abs(info.fps - FPS) > 0.01:
        notes.append(f"{info.fps:.3g} fps resampled to {FPS} fps")
    return info, audio, declared


def _listen(path: Path, mono16k: np.ndarray, declared: Detected, duration: float, cfg: DataConfig,
            unit: Unit) -> tuple[Speech, Transcript, Detected, _Heard]:  # fmt: skip
    """Stages 2-4: the transcript, its language (declared, else found from its text or by Whisper) checked against
    its script, G2P and alignment; meanwhile where speech is (Silero VAD, in a thread while the words are aligned:
    its torch kernels and the aligner's espeak-ng processes leave each other room; energy only when Silero is
    missing). Whisper waits for the VAD: it transcribes only where speech was heard."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        vad_job = pool.submit(speech_activity, mono16k, VAD_HOP)
        transcript, found = file_transcript(path, declared, mono16k, lambda: vad_job.result()[0], cfg, unit)
        found = check_language(transcript.text(), found, mono16k, unit.notes)
        unit.language, unit.language_source, unit.language_confidence = found.language, found.method, found.confidence
        spoken = _align(mono16k, transcript, found.language, duration, cfg, unit)
        active, vad = vad_job.result()
    unit.vad, unit.speech_seconds = vad, round(float(active.sum()) * VAD_HOP, 2)
    spoken.line_source = [transcript.source] * len(spoken.lines)
    return spoken, transcript, found, _Heard(active, vad)


def _align(mono16k: np.ndarray, transcript: Transcript, language: str, duration: float, cfg: DataConfig,
           unit: Unit) -> Speech:  # fmt: skip
    """Stages 3-4: G2P and alignment of every cue (the same call as ``python -m data_prep align``)."""
    spoken = align_transcript(mono16k, transcript, language, duration, cfg.acoustic_model, unit.notes)
    unit.alignment_method = spoken.alignment.method
    unit.notes += spoken.alignment.notes
    if spoken.alignment.words:
        unit.alignment_confidence = round(float(np.mean([w.confidence for w in spoken.alignment.words])), 3)
    return spoken


def _segment(spoken: Speech, transcript: Transcript, active: np.ndarray, mono16k: np.ndarray, duration: float,
             language: str, cfg: DataConfig, unit: Unit) -> Plan:  # fmt: skip
    """Stage 5: speech without transcript (per config), then the cut; every second of the file accounted for."""
    notes = unit.notes
    speech = runs(active.tolist(), VAD_HOP)
    energy = _levels(mono16k)
    if not spoken.alignment.words and (not speech or cfg.untranscribed != "drop"):
        return _ambient(duration, speech, cfg, unit)
    unit.kind = "speech"
    loose = _untranscribed(speech, spoken.alignment.words, transcript, energy, cfg)
    if loose and cfg.untranscribed == "asr" and transcript.source != "asr":
        spoken.extend(asr_untranscribed(mono16k, loose, language, cfg, unit))
        loose = []
    words = spoken.alignment.words
    keep_loose = cfg.untranscribed != "drop"
    items = sorted(words + (loose if keep_loose else []), key=lambda w: w.start)
    cut = plan(items, spoken.end or duration, cfg.min_seconds, cfg.max_seconds)
    if loose:
        verb = "kept as clips without a Dialogue line" if keep_loose else "dropped (untranscribed: drop)"
        notes.append(f"{sum(x.end - x.start for x in loose):.1f} s of speech outside every transcript cue: {verb}")
    spans = [(c.start, c.end) for c in cut.clips]
    unit.timeline = timeline(duration, spans, words, speech, [(d.start, d.end, d.reason) for d in cut.dropped],
                             UNTRANSCRIBED + ("" if keep_loose else " (dropped by config)"))  # fmt: skip
    unit.speech_coverage = dict(zip(("transcribed_used_s", "transcribed_s"), coverage(words, spans)))
    unit.speech_coverage.update(zip(("detected_used_s", "detected_s"), coverage(speech + words, spans)))
    return cut


def _ambient(duration: float, speech: list[Interval], cfg: DataConfig, unit: Unit) -> Plan:
    """Stage 5 for footage with no transcribed word to cut between (music, ambience, no audio track, talk nobody
    transcribed): all of it, in clips of equal length within ``min_seconds``-``max_seconds``."""
    unit.kind = unit.kind or ("ambient" if not speech else "speech without transcript")
    unit.notes.append(f"no transcribed words ({unit.kind}): kept whole as clips of equal length without a "
                      "Dialogue line")  # fmt: skip
    cut = fixed_clips(duration, cfg.min_seconds, cfg.max_seconds)
    spans = [(c.start, c.end) for c in cut.clips]
    rest = [(0.0, duration, "left between clips by the 4k+1 frame rounding")] if cut.clips else []
    unit.timeline = timeline(duration, spans, [], speech, rest + [(d.start, d.end, d.reason) for d in cut.dropped])
    unit.speech_coverage = {"transcribed_used_s": 0.0, "transcribed_s": 0.0}
    unit.speech_coverage.update(zip(("detected_used_s", "detected_s"), coverage(speech, spans)))
    return cut


def _cut(reader: FrameReader, stereo: np.ndarray, planned: PlannedClip, reference: np.ndarray | None,
         npz: Path) -> np.ndarray:  # fmt: skip
    """Stage 6: the clip's frames (in its bucket) and 51200 Hz stereo audio, written atomically to ``npz``; returns
    the frames."""
    frames = reader.read(planned.start, planned.frames)
    wave = _slice(stereo, round(planned.start * AUDIO_RATE), audio_samples_for(planned.frames))
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, frames=frames, audio=wave, **({"reference": reference} if reference is not None else {}))
    return frames


def _caption(description: str, lines: list[str], speaker: str, language: str, meta: dict, cfg: DataConfig) -> str:
    """Stage 7: the clip's prompt (metadata overrides the config's trigger and background sound)."""
    return build_caption(description, lines=lines, speaker=speaker, language=language,
                         trigger=meta.get("trigger") or cfg.trigger, trigger_position=cfg.trigger_position,
                         background=meta.get("background_sound") or cfg.background_sound)  # fmt: skip


def _levels(mono16k: np.ndarray) -> np.ndarray:
    """Mean-square level per :data:`VAD_HOP` (where to split speech that has no words)."""
    hop = int(VAD_HOP * SPEECH_RATE)
    n = len(mono16k) // hop
    return np.mean(mono16k[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) if n else np.zeros(0)


def _untranscribed(speech: list[Interval], words: list[Interval], transcript: Transcript, energy: np.ndarray,
                   cfg: DataConfig) -> list[Interval]:  # fmt: skip
    """Detected speech that no aligned word (nor any timed cue) explains, split at its quietest hop when longer
    than ``max_seconds`` (no words to respect there; a cut at the quietest point is the kindest)."""
    covered = [(w.start - 0.3, w.end + 0.3) for w in words]
    covered += [(s.start, s.end) for s in transcript.segments if s.start is not None and s.end is not None and words]
    out = []
    for s in speech:
        a = s.start
        for lo, hi in sorted(covered):
            if hi <= a or lo >= s.end:
                continue
            if lo - a >= 0.2:
                out.append(Interval(a, lo, ""))
            a = max(a, hi)
        if s.end - a >= 0.2:
            out.append(Interval(a, s.end, ""))
    limit = frames_for(cfg.max_seconds) / FPS - 0.4
    done: list[Interval] = []
    while out:
        s = out.pop()
        if s.end - s.start <= limit:
            done.append(s)
            continue
        a, b = int(s.start / VAD_HOP), int(s.end / VAD_HOP)
        lo, hi = a + (b - a) // 5, b - (b - a) // 5
        k = lo + int(np.argmin(energy[lo:hi])) if hi > lo and hi <= len(energy) else (a + b) // 2
        out += [Interval(s.start, k * VAD_HOP, ""), Interval(k * VAD_HOP, s.end, "")]
    return sorted(done, key=lambda x: x.start)


def _slice(wave: np.ndarray, a: int, length: int) -> np.ndarray:
    """``wave[:, a:a+length]`` zero-padded to ``length`` samples."""
    out = np.zeros((wave.shape[0], length), dtype=np.float32)
    chunk = wave[:, a : a + length]
    out[:, : chunk.shape[1]] = chunk
    return out


def _speech_mask(clip_align: Alignment, real: bool, heard_at: _Heard, start: float,
                 n: int) -> tuple[np.ndarray, str]:  # fmt: skip
    """One value per audio latent (25/s) and its source. With a real alignment (``ctc``/``dtw``): the aligned
    phonemes, kept where Silero hears speech within 80 ms (the aligner stretches words over pauses it cannot
    see); else the voice-activity detection alone (Silero, or energy when it is missing)."""
    active, vad = heard_at.active, heard_at.detector
    t = start + (np.arange(n) + 0.5) / FPS
    idx = np.clip((t / VAD_HOP).astype(np.int64), 0, max(0, len(active) - 1))
    heard = active[idx].astype(bool) if len(active) else np.zeros(n, dtype=bool)
    if real and clip_align.phonemes:
        mask = np.zeros(n, dtype=bool)
        for p in clip_align.phonemes:
            mask[max(0, int(p.start * FPS)) : min(n, int(np.ceil(p.end * FPS)))] = True
        if vad == "silero":
            return (mask & speech_near(heard, 2)).astype(np.float32), f"phonemes ({clip_align.method}) & silero"
        return mask.astype(np.float32), f"phonemes ({clip_align.method})"
    return heard.astype(np.float32), vad


def _clip_lines(speech: Speech, start: float, end: float, language: str) -> tuple[list[str], set[str]]:
    """The clip's spoken lines, and where they came from (``srt``, ``asr``, ...): a cue said wholly inside the clip
    keeps its transcript text (punctuation and all); a cue cut by the clip's edges contributes the aligned words
    that fall inside."""
    inside: dict[int, list[str]] = {}
    count: dict[int, int] = {}
    for w, line in zip(speech.alignment.words, speech.word_line):
        count[line] = count.get(line, 0) + 1
        if w.start >= start - 1e-6 and w.end <= end + 1e-6:
            inside.setdefault(line, []).append(w.label)
    lines = [speech.lines[i] if len(ws) == count[i] else join_words(ws, language) for i, ws in sorted(inside.items())]
    return lines, {speech.line_source[i] for i in inside}


def _caption_sidecar(path: Path) -> str:
    for suffix in CAPTION_SUFFIXES:
        side = path.with_name(path.stem + suffix)
        if side.is_file():
            return " ".join(side.read_text(encoding="utf-8-sig").split())
    return ""


def _reference(folder: Path, meta: dict, width: int, height: int) -> np.ndarray | None:
    name = meta.get("reference_image")
    if not name:
        return None

    path = safe_child(folder, name)
    try:
        image = np.asarray(Image.open(path).convert("RGB"))[None]
    except (UnidentifiedImageError, OSError) as e:
        raise Skip(f"reference_image {name!r} is not a readable image ({e})") from e
    return resize_crop(image, width, height)[0]


def safe_child(folder: Path, name: str) -> Path:
    """``folder / name``, refusing paths that escape ``folder`` (``..``, absolute paths, links out)."""
    root = folder.resolve()
    target = (folder / name).resolve()
    if root != target and root not in target.parents:
        raise Skip(f"path {name!r} in metadata points outside the footage folder")
    if not target.is_file():
        raise Skip(f"file {name!r} named in metadata does not exist")
    return target


__all__ = [
    "CAPTION_SUFFIXES",
    "METADATA_KEYS",
    "input_fingerprint",
    "prepare_file",
    "safe_child",
    "sidecars",
]  # fmt: skip
