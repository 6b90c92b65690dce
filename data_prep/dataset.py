"""Stage 9: the Hugging Face dataset (Arrow, ``save_to_disk``), its manifest, and a reader that checks both.

The format is fixed by ``docs/architecture.md``: one row per clip, the columns below, and
``manifest.json`` = ``{"format_version", "fingerprint", "encoders", "settings", "encoded", ...}``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hhtune.contract import BUCKETS, FORMAT_VERSION
from hhtune.encoders import EncoderPaths, encoders_fingerprint
from hhtune.io import atomic_dir, atomic_write_text

from .config import DataConfig
from .encode import LATENTS, clip_key, latents_key
from .segment import alignment_from_json
from .textgrid import write_textgrid
from .units import Clip, Unit

META_COLUMNS = ("clip_id", "source_file", "start_s", "end_s", "language", "caption", "transcript", "alignment",
                "speech_mask", "bucket", "width", "height", "num_frames")  # fmt: skip
LANGUAGE_CODES = ("en", "zh", "yue", "ja", "ko", "de", "fr", "unknown")
BUCKET_NAMES = tuple(BUCKETS)


class DatasetFormatError(ValueError):
    """A ``DATASET_DIR`` that is missing, half-written, stale or not in the format hhtune reads."""


def features(encoded: bool):
    """The Arrow schema of the rows (latents as nested float32 lists: their shapes differ per bucket)."""
    import datasets

    f32, List = datasets.Value("float32"), datasets.List
    cols = {
        "clip_id": datasets.Value("string"), "source_file": datasets.Value("string"),
        "start_s": datasets.Value("float64"), "end_s": datasets.Value("float64"),
        "language": datasets.Value("string"), "caption": datasets.Value("string"),
        "transcript": datasets.Value("string"), "alignment": datasets.Value("string"),
        "speech_mask": List(f32), "bucket": datasets.Value("string"), "width": datasets.Value("int32"),
        "height": datasets.Value("int32"), "num_frames": datasets.Value("int32"), "speaker": datasets.Value("string"),
    }  # fmt: skip
    if encoded:
        cols |= {"video_latents": List(List(List(List(f32)))), "audio_latents": List(List(f32)),
                 "text_embeds": List(List(f32)), "reference_latents": List(List(List(List(f32))))}  # fmt: skip
    return datasets.Features(cols)


def manifest_fingerprint(cfg: DataConfig, encoders_fp: str | None) -> str:
    """Fingerprint of the settings of stages 1-7 and the encoders: equal fingerprints, interchangeable datasets."""
    return hashlib.sha256(json.dumps([FORMAT_VERSION, cfg.fingerprint(), encoders_fp]).encode()).hexdigest()[:16]


def _rows(clips: list[Clip], latents: Path | None):
    from safetensors.torch import load_file

    for c in clips:
        row = {k: getattr(c, k) for k in META_COLUMNS}
        row["speech_mask"] = list(c.speech_mask)
        row["speaker"] = c.speaker
        if latents is not None:
            lat = load_file(latents / f"{c.clip_id}.safetensors")
            row |= {k: lat[k].numpy() for k in LATENTS}
        yield row


def write_dataset(units: list[Unit], out: Path, cfg: DataConfig, encoders: EncoderPaths | None) -> Path:
    """Write ``dataset/`` (one row per clip), ``alignments/`` and ``manifest.json``, each atomically.

    Rows stream through ``Dataset.from_generator`` (a private cache under ``.work``), so latents of a
    large dataset never sit in memory together. With ``encoders``, every clip must have latents whose
    key matches it: a stale or missing latent stops the write instead of entering the dataset.
    """
    import datasets

    out = Path(out)
    clips = [c for u in units for c in u.clips]
    latents = out / ".work" / "latents" if encoders is not None else None
    if latents is not None:
        bad = [c.clip_id for u in units for c in u.clips
               if latents_key(latents / f"{c.clip_id}.safetensors") != clip_key(c, u.inputs)]  # fmt: skip
        if bad:
            raise DatasetFormatError(f"{len(bad)} clip(s) have no up-to-date latents (e.g. {bad[0]}); run the encode stage")
    with atomic_dir(out / "alignments") as tmp:
        for c in clips:
            (tmp / f"{c.clip_id}.json").write_text(c.alignment, encoding="utf-8")
            write_textgrid(alignment_from_json(c.alignment), c.num_frames / 25, tmp / f"{c.clip_id}.TextGrid")
    (out / ".work").mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=".hf-cache.", dir=out / ".work"))
    try:
        with atomic_dir(out / "dataset") as tmp:
            ds = datasets.Dataset.from_generator(_rows, gen_kwargs={"clips": clips, "latents": latents},
                                                 features=features(encoders is not None), cache_dir=str(cache),
                                                 keep_in_memory=False) if clips else \
                datasets.Dataset.from_dict({k: [] for k in features(encoders is not None)},
                                           features=features(encoders is not None))  # fmt: skip
            ds.save_to_disk(str(tmp))
            del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    enc = {k: str(v) for k, v in encoders.model_dump().items()} if encoders is not None else {}
    enc_fp = encoders_fingerprint(encoders) if encoders is not None else None
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": manifest_fingerprint(cfg, enc_fp), "encoders": enc,
                "encoders_fingerprint": enc_fp, "settings": cfg.model_dump(mode="json"), "encoded": encoders is not None,
                "clips": len(clips), "languages": sorted({c.language for c in clips}),
                # how each clip's words and speech mask were found (dtw/ctc alignment; phonemes, Silero VAD or energy)
                "clip_sources": {c.clip_id: {"alignment": c.alignment_method, "speech_mask": c.mask_source}
                                 for c in clips}}  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return out / "dataset"


@dataclass
class DatasetDir:
    """A checked ``DATASET_DIR``: the rows and the manifest."""

    path: Path
    dataset: object  # datasets.Dataset
    manifest: dict

    @property
    def encoded(self) -> bool:
        return bool(self.manifest.get("encoded"))


def load_dataset_dir(path: str | Path, *, require_encoded: bool = False, fingerprint: str | None = None,
                     check_rows: bool = True) -> DatasetDir:  # fmt: skip
    """Open a ``DATASET_DIR`` written by :func:`write_dataset` and check it against the format.

    Checks the manifest (version, clip count, ``fingerprint`` when given: a dataset built with
    other settings or encoders is refused, not used), the columns, and with ``check_rows`` every
    row's metadata (4k+1 frames, bucket, language, mask length, alignment JSON) and the latent
    shapes of one row per shape group.
    """
    import datasets

    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise DatasetFormatError(f"{path} is not a data_prep dataset (no manifest.json): "
                                 f"`python -m data_prep build FOOTAGE_DIR --out {path}`")  # fmt: skip
    manifest = json.loads(mpath.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetFormatError(f"{path}: format_version {manifest.get('format_version')!r}; this reader takes {FORMAT_VERSION}")
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        raise DatasetFormatError(f"{path} was built with other settings or encoders (fingerprint "
                                 f"{manifest.get('fingerprint')}, expected {fingerprint}); rebuild it")  # fmt: skip
    if require_encoded and not manifest.get("encoded"):
        raise DatasetFormatError(f"{path} has no latents; re-run `python -m data_prep build ... --encode`")
    try:
        ds = datasets.load_from_disk(str(path / "dataset"))
    except (FileNotFoundError, ValueError) as e:
        raise DatasetFormatError(f"{path}/dataset is missing or incomplete ({e})") from e
    need = META_COLUMNS + (LATENTS if manifest.get("encoded") else ())
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise DatasetFormatError(f"{path}: dataset lacks columns {missing}")
    if len(ds) != manifest.get("clips", len(ds)):
        raise DatasetFormatError(f"{path}: manifest says {manifest.get('clips')} clips, the dataset has {len(ds)}")
    if check_rows:
        _check_rows(path, ds, bool(manifest.get("encoded")))
    return DatasetDir(path, ds, manifest)


def _check_rows(path: Path, ds, encoded: bool) -> None:
    import numpy as np

    meta = ds.select_columns([c for c in META_COLUMNS if c != "caption"])
    seen: dict[tuple, int] = {}
    ids = set()
    for i, r in enumerate(meta):
        where = f"{path}: row {i} ({r['clip_id']})"
        if r["clip_id"] in ids:
            raise DatasetFormatError(f"{where}: duplicate clip_id")
        ids.add(r["clip_id"])
        if (r["num_frames"] - 1) % 4 or r["num_frames"] < 1:
            raise DatasetFormatError(f"{where}: num_frames {r['num_frames']} is not 4k+1")
        if r["bucket"] not in BUCKET_NAMES or r["language"] not in LANGUAGE_CODES:
            raise DatasetFormatError(f"{where}: bucket {r['bucket']!r} / language {r['language']!r} not allowed")
        if r["width"] % 32 or r["height"] % 32:
            raise DatasetFormatError(f"{where}: {r['width']}x{r['height']} is not a multiple of 32")
        if len(r["speech_mask"]) != r["num_frames"]:
            raise DatasetFormatError(f"{where}: speech_mask has {len(r['speech_mask'])} values for {r['num_frames']} latents")
        a = json.loads(r["alignment"])
        if not set(str(a.get("method")).split("+")) <= {"ctc", "dtw", "none"} or not isinstance(a.get("words"), list):
            raise DatasetFormatError(f"{where}: alignment JSON lacks method/words")
        seen.setdefault((r["num_frames"], r["height"], r["width"]), i)
    if not encoded:
        return
    for (f, h, w), i in seen.items():
        row = ds[i]
        t = (f - 1) // 4 + 1
        shapes = {k: np.asarray(row[k], dtype=np.float32).shape for k in LATENTS if row[k] is not None}
        want = {"video_latents": (48, t, h // 16, w // 16), "reference_latents": (48, 1, h // 16, w // 16)}
        for k, s in want.items():
            if k in shapes and shapes[k] != s:
                raise DatasetFormatError(f"{path}: row {i} {k} shape {shapes[k]}, expected {s}")
        if shapes["audio_latents"] != (f, 64):
            raise DatasetFormatError(f"{path}: row {i} audio_latents shape {shapes['audio_latents']}, expected {(f, 64)}")
        if len(shapes["text_embeds"]) != 2 or shapes["text_embeds"][0] > 640:
            raise DatasetFormatError(f"{path}: row {i} text_embeds shape {shapes['text_embeds']}, expected [<=640, C]")


__all__ = [
    "FORMAT_VERSION",
    "META_COLUMNS",
    "DatasetDir",
    "DatasetFormatError",
    "features",
    "load_dataset_dir",
    "manifest_fingerprint",
    "write_dataset",
]  # fmt: skip
