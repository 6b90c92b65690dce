"""Stages 1-7 for one footage file: probe, decode, transcript, G2P, alignment, cutting, captions, buckets.

Runs in a worker process. Its result, a *unit*, is written atomically to
``DATASET_DIR/.work/units/``; the decoded clips go to ``.work/clips/`` the same way,
so a killed build resumes by skipping finished units and never reads half a file.
A unit remembers a fingerprint of its inputs (the file, its sidecars, its metadata row,
the settings): when any of them changes, the file is done again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hhtune.contract import AUDIO_SAMPLE_RATE as AUDIO_RATE
from hhtune.contract import FPS, audio_samples_for, bucket_size, frames_for, nearest_bucket
from hhtune.contract import SPEECH_SAMPLE_RATE as SPEECH_RATE
from hhtune.io import atomic_path, atomic_write_text
from hhtune.media import FrameReader, MediaError, decode_audio, probe, resize_crop
from hhtune.speech.align import Alignment, Interval, PhonemeRecognizer, align
from hhtune.speech.g2p import phonemize
from hhtune.speech.languages import normalise_language
from hhtune.speech.vad import energy_activity, speech_activity, speech_near

from .accounting import UNTRANSCRIBED, coverage, timeline, whole_file
from .captions import build_caption, join_words
from .checks import script_languages, script_mismatch, too_long
from .config import DataConfig
from .segment import plan, runs, shift, window
from .transcripts import Segment, Transcript, parse_transcript, transcribe

TRANSCRIPT_SUFFIXES = (".srt", ".vtt", ".txt")
CAPTION_SUFFIXES = (".caption.txt", ".caption")
METADATA_KEYS = ("file_name", "language", "caption", "speaker", "trigger", "reference_image", "background_sound")
VAD_HOP = 0.04  # seconds per voice-activity decision
CUE_PAD = 0.3  # seconds of air the aligner may look at around a cue


class Skip(Exception):
    """The file is skipped; the message is its reason in the report."""


def unit_name(rel: str) -> str:
    """File name of a unit: stable across runs, unique per source file."""
    return hashlib.sha1(rel.encode()).hexdigest()[:12] + ".json"


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


def prepare_file(path: Path, rel: str, meta: dict, cfg: DataConfig, work: Path) -> dict:
    """Run stages 1-7 on one file and write its unit; never raises for bad input (the unit says why)."""
    unit: dict = {"file": rel, "fate": "skipped", "reason": "", "clips": [], "notes": []}
    try:
        unit["inputs"] = input_fingerprint(path, meta, cfg)
        _prepare(path, rel, meta, cfg, work, unit)
        n = len(unit["clips"])
        unit["fate"] = "used" if n == 1 else "split" if n > 1 else "skipped"
        if n > 1:
            unit["reason"] = f"split into {n} clips"
        elif n == 0 and not unit["reason"]:
            unit["reason"] = (f"no clip of {cfg.min_seconds}-{cfg.max_seconds} s fits between word boundaries "
                              f"({unit.get('probe', {}).get('duration', 0):.2f} s of footage)")  # fmt: skip
    except (Skip, MediaError, ValueError, OSError) as e:
        unit["reason"] = str(e)
        unit["clips"] = []
    except Exception as e:  # an unexpected failure must not stop the build: report it with its trace
        unit["reason"] = f"internal error: {type(e).__name__}: {e}"
        unit["notes"].append(traceback.format_exc(limit=4))
        unit["clips"] = []
    if unit["fate"] == "skipped" and not unit["clips"]:
        duration = float((unit.get("probe") or {}).get("duration") or 0.0)
        if not _all_planned(unit):
            unit["timeline"] = whole_file(duration, unit["reason"])
    atomic_write_text(work / "units" / unit_name(rel), json.dumps(unit, ensure_ascii=False))
    return unit


def _all_planned(unit: dict) -> bool:
    """Whether the file got through cutting (its timeline then already says why each range was dropped)."""
    return bool(unit.get("timeline")) and "speech_coverage" in unit


@dataclass
class _Speech:
    """The aligned speech of a whole file: words, phonemes, and which transcript line each word came from."""

    alignment: Alignment
    lines: list[str] = field(default_factory=list)  # transcript text per cue
    word_line: list[int] = field(default_factory=list)  # cue index per aligned word
    end: float = 0.0  # clips may not go past this (the end of the transcribed part)


def _prepare(path: Path, rel: str, meta: dict, cfg: DataConfig, work: Path, unit: dict) -> None:
    notes: list[str] = unit["notes"]
    unknown = sorted(set(meta) - set(METADATA_KEYS))
    if unknown:
        notes.append(f"metadata keys ignored: {', '.join(unknown)} (known: {', '.join(METADATA_KEYS[1:])})")
    # stage 1: probe and decode (the audio once; both rates are resampled in memory)
    info = probe(path)
    unit["probe"] = asdict(info)
    if info.audio_channels == 0:
        raise Skip("no audio track: HappyHorse learns picture and sound together")
    language = normalise_language(meta.get("language") or cfg.language or "unknown")
    audio = decode_audio(path)
    if info.audio_rate and info.audio_rate < 16000:
        notes.append(f"low audio sample rate {info.audio_rate} Hz (upsampled to {AUDIO_RATE}; it will sound band-limited)")
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
    duration = info.duration

    # stage 2: transcript, and where speech is (Silero VAD, in a thread while the words are aligned: its torch
    # kernels and the aligner's espeak-ng processes leave each other room; energy only when Silero is missing)
    with ThreadPoolExecutor(max_workers=1) as pool:
        vad_job = pool.submit(speech_activity, audio.mono16k, VAD_HOP)
        spoken, language, transcript = _words(path, audio.mono16k, language, duration, cfg, unit)
        active, unit["vad"] = vad_job.result()
    speech = runs(active.tolist(), VAD_HOP)
    unit["speech_seconds"] = round(float(active.sum()) * VAD_HOP, 2)
    # stage 5: speech without transcript (per config), then the cut
    words = spoken.alignment.words
    energy = _levels(audio.mono16k)
    if not words and not speech and cfg.untranscribed != "drop":  # no speech at all: ambient footage, kept whole
        notes.append("no speech detected: kept as clips without a Dialogue line (ambient footage)")
        loose = _untranscribed([Interval(0.0, frames_for(duration) / FPS, "")], [], transcript, energy, cfg)
    else:
        loose = _untranscribed(speech, words, transcript, energy, cfg)
    if loose and cfg.untranscribed == "asr":
        extra = _asr_words(audio.mono16k, loose, language, cfg, notes)
        spoken.alignment.words += extra.alignment.words
        spoken.alignment.phonemes += extra.alignment.phonemes
        spoken.word_line += [len(spoken.lines) + i for i in extra.word_line]
        spoken.lines += extra.lines
        loose = []
    keep_loose = cfg.untranscribed == "speech_without_dialogue"
    items = sorted(words + (loose if keep_loose else []), key=lambda w: w.start)
    cut = plan(items, spoken.end or duration, cfg.min_seconds, cfg.max_seconds)
    if loose:
        verb = "kept as clips without a Dialogue line" if keep_loose else "dropped (untranscribed: drop)"
        notes.append(f"{sum(x.end - x.start for x in loose):.1f} s of speech outside every transcript cue: {verb}")
    spans = [(c.start, c.end) for c in cut.clips]
    unit["timeline"] = timeline(duration, spans, words, speech, [(d.start, d.end, d.reason) for d in cut.dropped],
                                UNTRANSCRIBED + ("" if keep_loose else " (dropped by config)"))  # fmt: skip
    unit["speech_coverage"] = dict(zip(("transcribed_used_s", "transcribed_s"), coverage(words, spans)))
    unit["speech_coverage"].update(zip(("detected_used_s", "detected_s"), coverage(speech + words, spans)))
    bucket = nearest_bucket(info.width, info.height, list(cfg.buckets))
    width, height = bucket_size(bucket, cfg.base_resolution)
    root = path
    for _ in Path(rel).parts:
        root = root.parent
    reference = _reference(root, meta, width, height)
    if not cut.clips:
        return

    # stages 6-7: frames into the bucket, audio, captions
    unit["bucket"] = bucket
    reader = FrameReader(path, info, (width, height))
    speaker = meta.get("speaker") or cfg.speaker
    real = spoken.alignment.method in ("ctc", "dtw")
    try:
        for k, clip in enumerate(cut.clips):
            start, n, end = clip.start, clip.frames, clip.end
            frames = reader.read(start, n)
            wave = _slice(audio.stereo, int(round(start * AUDIO_RATE)), audio_samples_for(n))
            clip_align = window(spoken.alignment, start, end)
            mask, mask_source = _speech_mask(clip_align, real, active, unit["vad"], start, n)
            lines = _clip_lines(spoken, start, end, language)
            description = meta.get("caption") or _caption_sidecar(path) or ""
            caption = build_caption(description, lines=lines, speaker=speaker, language=language,
                                    trigger=meta.get("trigger") or cfg.trigger, trigger_position=cfg.trigger_position,
                                    background=meta.get("background_sound") or cfg.background_sound)  # fmt: skip
            clip_id = f"{Path(rel).stem}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}-{k:03d}"
            with atomic_path(work / "clips" / f"{clip_id}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, frames=frames, audio=wave, **({"reference": reference} if reference is not None else {}))
            unit["clips"].append({
                "clip_id": clip_id, "source_file": rel, "start_s": round(start, 4), "end_s": round(end, 4),
                "language": language, "caption": caption, "transcript": " ".join(lines),
                "alignment": clip_align.to_json(), "alignment_method": clip_align.method if clip_align.words else "none",
                "speech_mask": mask.tolist(), "mask_source": mask_source, "bucket": bucket, "width": width,
                "height": height, "num_frames": n, "speaker": speaker,
            })  # fmt: skip
    finally:
        reader.close()


def _levels(mono16k: np.ndarray) -> np.ndarray:
    """Mean-square level per :data:`VAD_HOP` (where to split speech that has no words)."""
    hop = int(VAD_HOP * SPEECH_RATE)
    n = len(mono16k) // hop
    return np.mean(mono16k[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) if n else np.zeros(0)


def _words(path: Path, mono16k: np.ndarray, language: str, duration: float, cfg: DataConfig,
           unit: dict) -> tuple[_Speech, str, Transcript]:  # fmt: skip
    """Stages 2-4: the transcript, its language checked against its script, G2P and alignment."""
    notes: list[str] = unit["notes"]
    transcript = _transcript(path, language, mono16k, cfg, unit)
    text = transcript.text()
    if text and not energy_activity(mono16k, SPEECH_RATE, VAD_HOP).any():
        raise Skip("the transcript claims speech but the audio is silent")
    if text and language == "unknown":
        fits = script_languages(text)
        if len(fits) == 1:
            language = next(iter(fits))
            notes.append(f"no language declared: {language!r} inferred from the transcript's script")
        else:
            notes.append("transcript present but no language declared: not aligned (set language in metadata)")
    if text and language != "unknown" and (why := script_mismatch(text, language)):
        raise Skip(why)
    unit["language"] = language

    # stages 3-4: G2P and alignment
    spoken = _align(mono16k, transcript, language, duration, cfg, notes)
    unit["alignment_method"] = spoken.alignment.method
    notes += spoken.alignment.notes
    if spoken.alignment.words:
        unit["alignment_confidence"] = round(float(np.mean([w.confidence for w in spoken.alignment.words])), 3)

    return spoken, language, transcript


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


def _speech_mask(clip_align: Alignment, real: bool, active: np.ndarray, vad: str, start: float,
                 n: int) -> tuple[np.ndarray, str]:  # fmt: skip
    """One value per audio latent (25/s) and its source. With a real alignment (``ctc``/``dtw``): the aligned
    phonemes, kept where Silero hears speech within 80 ms (the aligner stretches words over pauses it cannot
    see); else the voice-activity detection alone (Silero, or energy when it is missing)."""
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


def _clip_lines(speech: _Speech, start: float, end: float, language: str) -> list[str]:
    """The clip's spoken lines: a cue said wholly inside the clip keeps its transcript text (punctuation and
    all); a cue cut by the clip's edges contributes the aligned words that fall inside."""
    inside: dict[int, list[str]] = {}
    count: dict[int, int] = {}
    for w, line in zip(speech.alignment.words, speech.word_line):
        count[line] = count.get(line, 0) + 1
        if w.start >= start - 1e-6 and w.end <= end + 1e-6:
            inside.setdefault(line, []).append(w.label)
    return [speech.lines[i] if len(ws) == count[i] else join_words(ws, language) for i, ws in sorted(inside.items())]


def _transcript(path: Path, language: str, audio16: np.ndarray, cfg: DataConfig, unit: dict) -> Transcript:
    for suffix in TRANSCRIPT_SUFFIXES:
        side = path.with_name(path.stem + suffix)
        if side.is_file():
            try:
                t = parse_transcript(side)
            except Exception as e:  # whatever the parser raises, the file's fate names the sidecar and the problem
                raise Skip(f"transcript {side.name} could not be read: {e}") from e
            unit["transcript_source"] = f"sidecar {side.name}"
            return t
    if cfg.asr_model:
        unit["transcript_source"] = "asr"
        unit["notes"].append(f"transcript from local ASR ({cfg.asr_model})")
        return transcribe(audio16, language, cfg.asr_model)
    unit["transcript_source"] = "none"
    unit["notes"].append("no transcript sidecar and no asr_model: its speech is handled as untranscribed "
                         f"({cfg.untranscribed})")
    return Transcript()


@functools.lru_cache(maxsize=2)
def _recognizer(path: str) -> PhonemeRecognizer:
    """One acoustic model per worker process."""
    return PhonemeRecognizer(path)


def _cues(transcript: Transcript, duration: float, notes: list[str]) -> list[Segment]:
    """Timed cues inside the clip (later ones dropped, overlong ones trimmed), or the untimed text as one cue."""
    segs = [s for s in transcript.segments if s.text.strip()]
    if not any(s.start is not None for s in segs):
        text = " ".join(s.text for s in segs).strip()
        return [Segment(0.0, duration, text)] if text else []
    timed = [s for s in segs if s.start is not None]
    inside = [s for s in timed if s.start < duration - 0.05]
    if not inside:
        raise Skip(f"the transcript is longer than the clip: every cue starts after its end ({duration:.2f} s)")
    if len(inside) < len(timed):
        notes.append(f"{len(timed) - len(inside)} transcript cue(s) start after the clip ends ({duration:.2f} s): dropped")
    out = []
    for s in inside:
        end = s.end if s.end is not None and s.end > s.start else duration
        if end > duration + 0.25:
            notes.append(f"cue {s.start:.2f}-{end:.2f} s runs past the end ({duration:.2f} s): trimmed")
        out.append(Segment(s.start, min(end, duration), s.text))
    return out


def _align(audio16: np.ndarray, transcript: Transcript, language: str, duration: float, cfg: DataConfig,
           notes: list[str]) -> _Speech:  # fmt: skip
    if not transcript.text() or language == "unknown":
        return _Speech(Alignment("none"), end=duration)
    cues = _cues(transcript, duration, notes)
    recognizer = _recognizer(cfg.acoustic_model) if cfg.acoustic_model else None
    out = _Speech(Alignment("none"), end=duration)
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
        part = shift(align(audio16[int(lo * SPEECH_RATE) : int(hi * SPEECH_RATE)], words, recognizer), lo)
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


def _asr_words(audio16: np.ndarray, loose: list[Interval], language: str, cfg: DataConfig, notes: list[str]) -> _Speech:
    """Transcribe each stretch of untranscribed speech with the local ASR model and align it like a cue."""
    segs = []
    for s in loose:
        t = transcribe(audio16[int(s.start * SPEECH_RATE) : int(s.end * SPEECH_RATE)], language, cfg.asr_model)
        if t.text():
            segs.append(Segment(s.start, s.end, t.text()))
    notes.append(f"{len(segs)} stretch(es) of untranscribed speech transcribed by the local ASR ({cfg.asr_model})")
    return _align(audio16, Transcript(segs, "asr"), language, len(audio16) / SPEECH_RATE, cfg, notes)


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
    from PIL import Image, UnidentifiedImageError

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
    "TRANSCRIPT_SUFFIXES",
    "Skip",
    "input_fingerprint",
    "prepare_file",
    "safe_child",
    "sidecars",
    "unit_name",
]  # fmt: skip
