"""The captioning stage (after stages 1-7, before encoding): each clip's description, speaker and background sound
written by a captioning model, in the official three-part format.

The ``Dialogue`` lines are never the captioner's: they are the clip's transcript lines as stage 7 wrote them.
A file whose metadata row (``caption``) or ``.caption`` sidecar gives a description keeps it and is not captioned.
Answers are cached in ``DATASET_DIR/captions_cache/`` (one JSON per clip, written atomically, outside ``.work`` so
``--rebuild`` keeps them), keyed by the clip's pixels and sound, the model and the prompt: a rebuild asks again
only for clips it has not seen, and the answers already made stay when the endpoint later fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from hhtune.io import atomic_write_text
from hhtune.progress import ProgressBar

from ..caption_format import dialogue_lines
from ..captions import build_caption
from ..config import DataConfig
from ..prepare import CAPTION_SUFFIXES
from ..units import Clip, Unit
from .answer import PROMPT_VERSION, Described, parse_answer, prompt_text
from .media import clip_digest, load_clip_media

CACHE = "captions_cache"


def caption_units(units: list[Unit], footage: Path, out: Path, cfg: DataConfig, meta: dict[str, dict], *,
                  progress: bool = True) -> list[Unit]:  # fmt: skip
    """Caption every clip whose file gives no description; returns the units with the new captions (and a note per
    clip whose answer could not be used) and rewrites ``.work/units.json``. Raises :class:`CaptionerError` when the
    captioner cannot be loaded or reached (answers made until then are cached)."""
    from . import captioner_identity, load_captioner  # noqa: PLC0415 -- the chosen backend alone loads torch/openai

    footage, out = Path(footage), Path(out)
    identity, hears = captioner_identity(cfg.captioner)
    prompt = prompt_text(hears)
    answers: dict[str, str] = {}
    todo: list[tuple[Clip, str]] = []
    for u in units:
        if _own_description(footage / u.file, meta.get(u.file, {})):
            continue
        for c in u.clips:
            key = cache_key(clip_digest(_npz(out, c)), identity, prompt)
            cached = _read(out / CACHE / f"{key}.json")
            if cached is None:
                todo.append((c, key))
            else:
                answers[c.clip_id] = cached
    if todo:
        captioner = load_captioner(cfg.captioner)
        with ProgressBar("captions", len(todo), enabled=progress) as bar:
            for i in range(0, len(todo), captioner.batch_size):
                batch = todo[i : i + captioner.batch_size]
                media = [load_clip_media(_npz(out, c), cfg.captioner.frames) for c, _ in batch]
                for (c, key), text in zip(batch, captioner.answer(media, prompt)):
                    atomic_write_text(out / CACHE / f"{key}.json", json.dumps({"answer": text}, ensure_ascii=False))
                    answers[c.clip_id] = text
                bar.advance(len(batch))
    for u in units:
        row = meta.get(u.file, {})
        u.clips = [_recaption(c, answers[c.clip_id], row, cfg, u.notes) if c.clip_id in answers else c
                   for c in u.clips]  # fmt: skip
    atomic_write_text(out / ".work" / "units.json", json.dumps([u.to_json() for u in units], ensure_ascii=False))
    return units


def cache_key(digest: str, identity: str, prompt: str) -> str:
    """The cache key of one answer: the clip's content, the model, the prompt (and its version)."""
    return hashlib.sha256(json.dumps([digest, identity, prompt, PROMPT_VERSION]).encode()).hexdigest()[:24]


def _own_description(path: Path, row: dict) -> bool:
    """Whether the file's metadata row or a ``.caption`` sidecar gives its description (which then wins)."""
    return bool(row.get("caption")) or any(path.with_name(path.stem + s).is_file() for s in CAPTION_SUFFIXES)


def _npz(out: Path, clip: Clip) -> Path:
    return out / ".work" / "clips" / f"{clip.clip_id}.npz"


def _read(path: Path) -> str | None:
    """A cached answer (``None`` when there is none or it cannot be read)."""
    try:
        return json.loads(path.read_text())["answer"]
    except (OSError, ValueError, KeyError):
        return None


def _recaption(clip: Clip, answer: str, row: dict, cfg: DataConfig, notes: list[str]) -> Clip:
    """The clip with the captioner's description, speaker and background (metadata values still win); its Dialogue
    lines from its own stage-7 caption (the transcript). An unusable answer keeps the clip and adds a note."""
    described, why = parse_answer(answer)
    if described is None:
        notes.append(f"{clip.clip_id}: captioner answer not used ({why}); kept the metadata description")
        return clip
    return dataclasses.replace(clip, caption=_caption(clip, described, row, cfg),
                               speaker=row.get("speaker") or described.speaker or cfg.speaker)  # fmt: skip


def _caption(clip: Clip, d: Described, row: dict, cfg: DataConfig) -> str:
    return build_caption(d.description, lines=dialogue_lines(clip.caption),
                         speaker=row.get("speaker") or d.speaker or cfg.speaker, language=clip.language,
                         trigger=row.get("trigger") or cfg.trigger, trigger_position=cfg.trigger_position,
                         background=row.get("background_sound") or d.background)  # fmt: skip


__all__ = ["CACHE", "cache_key", "caption_units"]
