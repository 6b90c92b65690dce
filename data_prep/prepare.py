"""Stages 1-7 for one footage file: probe, decode, transcript, G2P, alignment, cutting, captions, buckets.

Runs in a worker process. Its result, a *unit*, is written atomically to
``DATASET_DIR/.work/units/``; the decoded clips go to ``.work/clips/`` the same way,
so a killed build resumes by skipping finished units and never reads half a file.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hhtune.io import atomic_path, atomic_write_text

from .align import Alignment, PhonemeRecognizer, align, speech_activity
from .buckets import bucket_size, nearest_bucket, resize_crop
from .captions import build_caption
from .config import DataConfig
from .g2p import phonemize
from .languages import normalise_language, script_language
from .media import FPS, MediaError, Probe, probe, read_audio, read_frames
from .segment import segment
from .transcripts import Transcript, TranscriptError, parse_transcript, transcribe

AUDIO_RATE = 51200
TRANSCRIPT_SUFFIXES = (".srt", ".vtt", ".txt")


class Skip(Exception):
    """The file is skipped; the message is its reason in the report."""


def unit_name(rel: str) -> str:
    """File name of a unit: stable across runs, unique per source file."""
    return hashlib.sha1(rel.encode()).hexdigest()[:12] + ".json"


def prepare_file(path: Path, rel: str, meta: dict, cfg: DataConfig, work: Path) -> dict:
    """Run stages 1-7 on one file and write its unit; never raises for bad input (the unit says why)."""
    unit = {"file": rel, "fate": "skipped", "reason": "", "clips": [], "notes": []}
    try:
        _prepare(path, rel, meta, cfg, work, unit)
        unit["fate"] = "used" if unit["clips"] else "skipped"
        if not unit["clips"] and not unit["reason"]:
            unit["reason"] = f"shorter than min_seconds ({cfg.min_seconds}s) after cutting at word boundaries"
    except (Skip, MediaError, TranscriptError, ValueError) as e:
        unit["reason"] = str(e)
    except Exception as e:  # an unexpected failure must not stop the build: report it with its trace
        unit["reason"] = f"internal error: {type(e).__name__}: {e}"
        unit["notes"].append(traceback.format_exc(limit=3))
    atomic_write_text(work / "units" / unit_name(rel), json.dumps(unit, ensure_ascii=False))
    return unit


def _prepare(path: Path, rel: str, meta: dict, cfg: DataConfig, work: Path, unit: dict) -> None:
    info = probe(path)
    unit["probe"] = asdict(info)
    if info.audio_channels == 0:
        raise Skip("no audio track: HappyHorse learns picture and sound together")
    language = normalise_language(meta.get("language") or cfg.language or "unknown")
    unit["language"] = language
    audio16 = read_audio(path, 16000)
    audio51 = read_audio(path, AUDIO_RATE)
    if info.audio_rate and info.audio_rate < 16000:
        unit["notes"].append(f"low audio sample rate {info.audio_rate} Hz (upsampled; the audio will sound band-limited)")
    if info.audio_channels > 2:
        unit["notes"].append(f"{info.audio_channels}-channel audio mixed down to mono, as the official pipeline feeds it")
    if info.rotation:
        unit["notes"].append(f"rotation {info.rotation} degrees applied")

    transcript = _transcript(path, language, audio16, cfg, unit)
    active = speech_activity(audio16, 16000, 0.04)
    if transcript.text() and not active.any():
        raise Skip("the transcript claims speech but the audio is silent")
    if transcript.text() and language == "unknown":
        unit["notes"].append("transcript present but no language declared: not aligned (set language in metadata)")
    if transcript.text() and language != "unknown" and language not in script_language(transcript.text()):
        raise Skip(f"the transcript's script does not match the declared language {language!r}")
    alignment = _align(audio16, transcript, language, info.duration, cfg)
    unit["alignment_method"] = alignment.method

    bucket = nearest_bucket(info.width, info.height, list(cfg.buckets))
    width, height = bucket_size(bucket, cfg.base_resolution)
    reference = _reference(path.parent, meta, width, height)
    for k, (start, n) in enumerate(segment(alignment.words, info.duration, cfg.min_seconds, cfg.max_seconds)):
        end = start + n / FPS
        frames = resize_crop(read_frames(path, start, n, info), width, height)
        a0 = int(round(start * AUDIO_RATE))
        audio = np.zeros(n * 2048, dtype=np.float32)
        chunk = audio51[a0 : a0 + n * 2048]
        audio[: len(chunk)] = chunk
        mask = speech_activity(audio16[int(start * 16000) : int(end * 16000)], 16000, 1 / FPS).astype(np.float32)
        mask = np.pad(mask, (0, max(0, n - len(mask))))[:n]
        clip_align = alignment.shifted(-start, start, end)
        lines = [" ".join(w.label for w in clip_align.words)] if clip_align.words else []
        caption = build_caption(meta.get("caption", ""), lines=lines, speaker=meta.get("speaker") or cfg.speaker,
                                language=language, trigger=meta.get("trigger") or cfg.trigger,
                                background=cfg.background_sound)  # fmt: skip
        clip_id = f"{Path(rel).stem}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}-{k:03d}"
        with atomic_path(work / "clips" / f"{clip_id}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, frames=frames, audio=audio, **({"reference": reference} if reference is not None else {}))
        unit["clips"].append({
            "clip_id": clip_id, "source_file": rel, "start_s": round(start, 4), "end_s": round(end, 4),
            "language": language, "caption": caption, "transcript": " ".join(lines),
            "alignment": clip_align.to_json(), "speech_mask": mask.tolist(), "bucket": bucket, "width": width,
            "height": height, "num_frames": n, "speaker": meta.get("speaker") or cfg.speaker,
        })  # fmt: skip
    if len(unit["clips"]) > 1:
        unit["notes"].append(f"split into {len(unit['clips'])} clips")


def _transcript(path: Path, language: str, audio16: np.ndarray, cfg: DataConfig, unit: dict) -> Transcript:
    for suffix in TRANSCRIPT_SUFFIXES:
        side = path.with_suffix(suffix)
        if side.is_file():
            t = parse_transcript(side)
            unit["transcript_source"] = t.source
            return t
    if cfg.asr_model:
        unit["transcript_source"] = "asr"
        return transcribe(audio16, language, cfg.asr_model)
    unit["transcript_source"] = "none"
    unit["notes"].append("speech unknown: no transcript sidecar and no asr_model configured")
    return Transcript()


def _align(audio16: np.ndarray, transcript: Transcript, language: str, duration: float, cfg: DataConfig) -> Alignment:
    if not transcript.text() or language == "unknown":
        return Alignment("none")
    recognizer = PhonemeRecognizer(cfg.acoustic_model) if cfg.acoustic_model else None
    timed = [s for s in transcript.segments if s.start is not None]
    if not timed:
        return align(audio16, phonemize(transcript.text(), language), recognizer)
    inside = [s for s in timed if s.start < duration]
    if not inside:
        raise Skip(f"every transcript cue starts after the clip ends ({duration:.2f}s)")
    out = Alignment()
    for seg in inside:
        a, b = int(seg.start * 16000), int(min(seg.end, duration) * 16000)
        part = align(audio16[a:b], phonemize(seg.text, language), recognizer)
        shifted = part.shifted(seg.start, -1e9, 1e9)
        out.method = part.method if out.method in ("none", part.method) else "mixed"
        out.words += shifted.words
        out.phonemes += shifted.phonemes
    return out


def _reference(folder: Path, meta: dict, width: int, height: int) -> np.ndarray | None:
    name = meta.get("reference_image")
    if not name:
        return None
    from PIL import Image

    path = safe_child(folder, name)
    image = np.asarray(Image.open(path).convert("RGB"))[None]
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
