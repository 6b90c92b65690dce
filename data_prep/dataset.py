"""Stage 9: the Hugging Face dataset (Arrow, ``save_to_disk``), its manifest, and the row-by-row check of one.

The format is the contract of ``hhtune.contract`` (columns, their types, the manifest and its
``format_version``), described in ``docs/architecture.md``; ``hhtune.dataset`` opens a dataset
for training and for :func:`load_dataset_dir` alike.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from hhtune.contract import (
    AUDIO_LATENTS,
    BUCKETS,
    COLUMN_TYPES,
    FORMAT_VERSION,
    HAS_AUDIO_COLUMN,
    LANGUAGES,
    LATENT_COLUMNS,
    MANIFEST,
    META_COLUMNS,
    MOUTH_BOXES,
    NO_MOUTH,
    REFERENCE_LATENTS,
    ROWS,
    SPEAKER_COLUMN,
    SR_VIDEO_LATENTS,
    TEXT_EMBEDS,
    TEXT_LENGTH,
    UNKNOWN_LANGUAGE,
    VIDEO_LATENTS,
    LatentShape,
    seconds_of,
)
from hhtune.dataset import DatasetDir, DatasetError, open_dataset_dir
from hhtune.encoders import EncoderPaths, encoders_fingerprint
from hhtune.io import atomic_dir, atomic_write_text

from .config import DataConfig
from .encode import LATENTS, clip_key, latents_key
from .segment import alignment_from_json
from .textgrid import write_textgrid
from .units import Clip, Unit

LANGUAGE_CODES = (*LANGUAGES, UNKNOWN_LANGUAGE)


def features(encoded: bool, mouth: bool = False, sr: bool = False):
    """The Arrow schema of the rows: the contract's column types, latents only when ``encoded``, the mouth boxes
    only with ``mouth`` (data config ``mouth_regions``), the clips at the super-resolution size only when
    ``encoded`` with ``sr`` (data config ``sr_resolution``)."""
    import datasets  # noqa: PLC0415 -- heavy: datasets (pyarrow) loads in ~1 s, only the Arrow schema needs it

    def arrow(kind: str):
        value = kind.removesuffix("[]" * kind.count("[]"))
        feature = datasets.Value(value)
        for _ in range(kind.count("[]")):
            feature = datasets.List(feature)
        return feature

    left_out = (() if encoded else (*LATENT_COLUMNS, REFERENCE_LATENTS)) + (() if mouth else (MOUTH_BOXES,))
    left_out += () if encoded and sr else (SR_VIDEO_LATENTS,)
    return datasets.Features({k: arrow(t) for k, t in COLUMN_TYPES.items() if k not in left_out})


def manifest_fingerprint(cfg: DataConfig, encoders_fp: str | None) -> str:
    """Fingerprint of the settings of stages 1-7, the encoders and the SR size encoded (if any): equal
    fingerprints, interchangeable datasets."""
    sr = [cfg.sr_resolution] if cfg.sr_resolution else []  # datasets without SR latents keep their fingerprint
    return hashlib.sha256(json.dumps([FORMAT_VERSION, cfg.fingerprint(), encoders_fp, *sr]).encode()).hexdigest()[:16]


def _rows(clips: list[Clip], latents: Path | None, sr: bool = False):
    for c in clips:
        row = {k: getattr(c, k) for k in META_COLUMNS}
        row["speech_mask"] = list(c.speech_mask)
        row[SPEAKER_COLUMN] = c.speaker
        row[HAS_AUDIO_COLUMN] = c.has_audio
        if c.mouth_boxes is not None:
            row[MOUTH_BOXES] = [list(b) for b in c.mouth_boxes]
        if latents is not None:
            lat = load_file(latents / f"{c.clip_id}.safetensors")
            row |= {k: lat[k].numpy() for k in (*LATENTS, *((SR_VIDEO_LATENTS,) if sr else ()))}
        yield row


def write_dataset(units: list[Unit], out: Path, cfg: DataConfig, encoders: EncoderPaths | None,
                  footage: Path | None = None) -> Path:
    """Write ``dataset/`` (one row per clip), ``alignments/`` and ``manifest.json``, each atomically.

    Rows stream through ``Dataset.from_generator`` (a private cache under ``.work``), so latents of a
    large dataset never sit in memory together. With ``encoders``, every clip must have latents whose
    key matches it: a stale or missing latent stops the write instead of entering the dataset.
    """
    import datasets  # noqa: PLC0415 -- heavy: datasets (pyarrow) loads in ~1 s, only writing the Arrow table needs it

    out = Path(out)
    clips = [c for u in units for c in u.clips]
    latents = out / ".work" / "latents" if encoders is not None else None
    if latents is not None:
        bad = [c.clip_id for u in units for c in u.clips
               if latents_key(latents / f"{c.clip_id}.safetensors") != clip_key(c, u.inputs, cfg.sr_resolution)]
        if bad:
            raise DatasetError(f"{len(bad)} clip(s) have no up-to-date latents (e.g. {bad[0]}); run the encode stage")
    with atomic_dir(out / "alignments") as tmp:
        for c in clips:
            (tmp / f"{c.clip_id}.json").write_text(c.alignment, encoding="utf-8")
            write_textgrid(alignment_from_json(c.alignment), seconds_of(c.num_frames), tmp / f"{c.clip_id}.TextGrid")
    (out / ".work").mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=".hf-cache.", dir=out / ".work"))
    try:
        with atomic_dir(out / ROWS) as tmp:
            # the mouth column when every clip was searched (data config mouth_regions)
            mouth = all(c.mouth_boxes is not None for c in clips) if clips else cfg.mouth_regions
            sr = cfg.sr_resolution is not None
            schema = features(encoders is not None, mouth, sr)
            ds = datasets.Dataset.from_generator(_rows, gen_kwargs={"clips": clips, "latents": latents, "sr": sr},
                                                 features=schema, cache_dir=str(cache),
                                                 keep_in_memory=False) if clips else \
                datasets.Dataset.from_dict({k: [] for k in schema}, features=schema)  # fmt: skip
            ds.save_to_disk(str(tmp))
            del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    enc = {k: str(v) for k, v in encoders.model_dump().items()} if encoders is not None else {}
    enc_fp = encoders_fingerprint(encoders) if encoders is not None else None
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": manifest_fingerprint(cfg, enc_fp), "encoders": enc,
                "encoders_fingerprint": enc_fp, "settings": cfg.model_dump(mode="json"),
                "encoded": encoders is not None,
                "clips": len(clips), "languages": sorted({c.language for c in clips}),
                # where the clips were cut from: evaluation compares samples with the training footage
                "footage": str(Path(footage).resolve()) if footage is not None else None,
                # how each clip's words and speech mask were found (dtw/ctc alignment; phonemes, Silero VAD or energy)
                # and where its Dialogue lines and its language came from (how sure the language is)
                "clip_sources": {c.clip_id: {"alignment": c.alignment_method, "speech_mask": c.mask_source,
                                             "transcript": c.transcript_source, "language": c.language_source,
                                             "language_confidence": c.language_confidence}
                                 for c in clips}}  # fmt: skip
    if kept := kept_edits(out, clips):  # captions edited in review that this build still has
        manifest["edits"] = kept
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    return out / ROWS


def caption_digest(caption: str) -> str:
    """A short hash of a caption: a review edit in the manifest names the caption it wrote by it."""
    return hashlib.sha1(caption.encode()).hexdigest()[:12]


def kept_edits(out: Path, clips: list[Clip]) -> list[dict]:
    """The caption review edits of the manifest in ``out`` whose clip still has the caption the edit wrote (a file
    prepared again has fresh captions, and its edits are gone)."""
    path = Path(out) / MANIFEST
    edits = json.loads(path.read_text()).get("edits", []) if path.is_file() else []
    captions = {c.clip_id: caption_digest(c.caption) for c in clips}
    return [e for e in edits if captions.get(e.get("clip_id")) == e.get("caption")]


def load_dataset_dir(path: str | Path, *, require_encoded: bool = False, fingerprint: str | None = None,
                     check_rows: bool = True) -> DatasetDir:  # fmt: skip
    """Open a ``DATASET_DIR`` written by :func:`write_dataset` and check it against the format.

    :func:`hhtune.dataset.open_dataset_dir` checks the manifest (version, clip count,
    ``fingerprint`` when given: a dataset built with other settings or encoders is refused, not
    used) and the columns; with ``check_rows`` every row's metadata (4k+1 frames, bucket,
    language, mask length, alignment JSON) and the latent shapes of one row per shape group.
    """
    opened = open_dataset_dir(path, require_encoded=require_encoded, fingerprint=fingerprint)
    if check_rows:
        _check_rows(opened.path, opened.dataset, opened.encoded)
    return opened


def _check_rows(path: Path, ds, encoded: bool) -> None:
    mouth = [MOUTH_BOXES] if MOUTH_BOXES in ds.column_names else []
    meta = ds.select_columns([c for c in META_COLUMNS if c != "caption"] + mouth)
    seen: dict[tuple, int] = {}
    ids = set()
    for i, r in enumerate(meta):
        where = f"{path}: row {i} ({r['clip_id']})"
        if r["clip_id"] in ids:
            raise DatasetError(f"{where}: duplicate clip_id")
        ids.add(r["clip_id"])
        if (r["num_frames"] - 1) % 4 or r["num_frames"] < 1:
            raise DatasetError(f"{where}: num_frames {r['num_frames']} is not 4k+1")
        if r["bucket"] not in BUCKETS or r["language"] not in LANGUAGE_CODES:
            raise DatasetError(f"{where}: bucket {r['bucket']!r} / language {r['language']!r} not allowed")
        if r["width"] % 32 or r["height"] % 32:
            raise DatasetError(f"{where}: {r['width']}x{r['height']} is not a multiple of 32")
        if len(r["speech_mask"]) != r["num_frames"]:
            raise DatasetError(f"{where}: speech_mask has {len(r['speech_mask'])} values for {r['num_frames']} latents")
        a = json.loads(r["alignment"])
        if not set(str(a.get("method")).split("+")) <= {"ctc", "dtw", "none"} or not isinstance(a.get("words"), list):
            raise DatasetError(f"{where}: alignment JSON lacks method/words")
        if mouth:
            _check_mouth(where, r)
        seen.setdefault((r["num_frames"], r["height"], r["width"]), i)
    if not encoded:
        return
    for (f, h, w), i in seen.items():
        row = ds[i]
        shapes = {k: np.asarray(row[k], dtype=np.float32).shape for k in LATENTS if row.get(k) is not None}
        want = LatentShape.from_pixels(w, h, f)
        for k, s in {VIDEO_LATENTS: want.video, REFERENCE_LATENTS: want.reference, AUDIO_LATENTS: want.audio}.items():
            if k in shapes and shapes[k] != s:
                raise DatasetError(f"{path}: row {i} {k} shape {shapes[k]}, expected {s}")
        if len(shapes[TEXT_EMBEDS]) != 2 or shapes[TEXT_EMBEDS][0] > TEXT_LENGTH:
            raise DatasetError(f"{path}: row {i} {TEXT_EMBEDS} shape {shapes[TEXT_EMBEDS]}, "
                               f"expected [<={TEXT_LENGTH}, C]")  # fmt: skip


def _check_mouth(where: str, r: dict) -> None:
    """A row's mouth boxes: one per latent frame, each inside the latent grid and not empty, or ``NO_MOUTH``."""
    shape = LatentShape.from_pixels(r["width"], r["height"], r["num_frames"])
    boxes = r[MOUTH_BOXES]
    if len(boxes) != shape.latent_frames:
        raise DatasetError(f"{where}: {MOUTH_BOXES} has {len(boxes)} boxes for {shape.latent_frames} latent frames")
    for box in boxes:
        x0, y0, x1, y1 = box
        if tuple(box) != NO_MOUTH and not (0 <= x0 < x1 <= shape.latent_width and 0 <= y0 < y1 <= shape.latent_height):
            raise DatasetError(f"{where}: {MOUTH_BOXES} box {box} is outside the "
                               f"{shape.latent_width}x{shape.latent_height} latent grid")  # fmt: skip


__all__ = ["LANGUAGE_CODES", "caption_digest", "features", "kept_edits", "load_dataset_dir", "manifest_fingerprint",
           "write_dataset"]
