"""The caption review loop: every clip's caption out to a CSV a team edits in a spreadsheet, and the edits back in.

``export_captions`` writes one row per clip (:data:`CSV_COLUMNS`) with a thumbnail strip of the clip
(``DATASET_DIR/thumbnails/<clip_id>.png``, the strip the report shows). ``import_captions`` reads the edited
CSV back: only ``caption`` and ``transcript`` are edits; the other columns are there to find the clip and may
not change. Every row is checked before anything is written; one bad row refuses the whole file. A changed
transcript is accepted when the caption's ``Dialogue`` lines say it (they always come from the transcript); the
word timings are not aligned again.

For an encoded dataset the changed clips' text features (:data:`~hhtune.contract.TEXT_EMBEDS`) are encoded again
with the text encoder the manifest names, once its encoders' fingerprint is the manifest's; the video and audio
encoders are never loaded and every other column is copied as it is. The new Arrow rows are written beside the
old ones and swapped in (:func:`hhtune.io.atomic_dir`). The build cache (``.work``: units and latents) takes the
same edits, so a later build keeps them without encoding again, and the report is written again.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from hhtune.contract import LATENT_COLUMNS, MANIFEST, REFERENCE_LATENTS, ROWS, TEXT_EMBEDS
from hhtune.encoders import EncoderPaths, encoders_fingerprint, load_text_encoder
from hhtune.io import atomic_dir, atomic_path, atomic_save_file, atomic_write_text

from .captions import LANGUAGE_NAMES, space_cjk
from .dataset import caption_digest, load_dataset_dir
from .encode import clip_key, latents_key
from .report import plural, thumbnail_strip, write_report
from .units import Unit, unit_name

CSV_COLUMNS = ("clip_id", "source_file", "start_s", "end_s", "thumbnail", "caption", "transcript", "language")
REQUIRED_COLUMNS = ("clip_id", "caption", "transcript")  # what an import reads; the rest only must not change
THUMBNAILS = "thumbnails"  # DATASET_DIR/thumbnails/<clip_id>.png
_FIXED = ("source_file", "language")
_TIMES = ("start_s", "end_s")
_LINE = re.compile(r'^<(?P<who>[^<>]+), (?P<language>[^<>,]+)>: "(?P<said>.*)"$')


class CaptionsError(ValueError):
    """A caption CSV that cannot be imported; the message names the row and the reason. Nothing was changed."""


@dataclass(frozen=True)
class Edit:
    """One clip's new caption and transcript, and which of the two changed."""

    clip_id: str
    caption: str
    transcript: str
    fields: tuple[str, ...]


def export_captions(dataset: str | Path, csv_path: str | Path) -> int:
    """Write ``csv_path`` (UTF-8 with a BOM, so spreadsheets read CJK text right): one row per clip. Returns the
    number of rows. Thumbnails missing from ``DATASET_DIR/thumbnails`` are drawn from the build cache."""
    out = Path(dataset)
    rows = load_dataset_dir(out, check_rows=False).dataset.select_columns([c for c in CSV_COLUMNS if c != "thumbnail"])
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "thumbnail": _thumbnail(out, r["clip_id"])})
    return len(rows)


def _thumbnail(out: Path, clip_id: str) -> str:
    """The path of the clip's thumbnail strip, drawn from ``.work/clips`` when missing ("" when it cannot be)."""
    png = out / THUMBNAILS / f"{clip_id}.png"
    npz = out / ".work" / "clips" / f"{clip_id}.npz"
    if not png.is_file():
        if not npz.is_file():
            return ""
        with np.load(npz) as data:
            strip, _ = thumbnail_strip(data["frames"])
        with atomic_path(png) as tmp:
            tmp.write_bytes(base64.b64decode(strip))
    return str(png.resolve())


def dialogue_problem(caption: str, transcript: str, language: str) -> str | None:
    """Why ``caption``'s ``Dialogue`` paragraph does not say ``transcript`` in ``language``, or ``None`` when it
    does (also when there is neither). Lines compare as the captioner writes them (CJK characters spaced)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", caption)]
    dialogue = [p for p in paragraphs if p.startswith("Dialogue:")]
    said = transcript.strip()
    if len(dialogue) > 1:
        return "the caption has more than one Dialogue paragraph"
    if not dialogue:
        return f'the caption has no Dialogue paragraph, but the clip\'s transcript is "{said}"' if said else None
    if not said:
        return "the caption has a Dialogue paragraph, but the clip has no transcript (nothing is said in it)"
    name = LANGUAGE_NAMES.get(language, language)
    spoken = []
    for line in (ln.strip() for ln in dialogue[0].splitlines()[1:]):
        m = _LINE.match(line)
        if line and m is None:
            return f'the Dialogue line {line!r} is not in the form <speaker, Language>: "line"'
        if m is not None and m["language"] != name:
            return f"the Dialogue line {line!r} is tagged {m['language']}, but the clip's language is {name}"
        spoken += [m["said"]] if m is not None else []
    if space_cjk(" ".join(spoken)) != space_cjk(said):
        return (f'the Dialogue lines say "{" ".join(spoken)}" but the transcript says "{said}" (Dialogue lines '
                "are the transcript's words: change both, or neither)")
    return None


def read_edits(csv_path: str | Path, current: dict[str, dict]) -> list[Edit]:
    """The edits in ``csv_path`` against ``current`` (clip id -> its :data:`CSV_COLUMNS` values), every row
    checked first: :class:`CaptionsError` names each bad row (spreadsheet numbering: the header is row 1)."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            rows = [] if missing else list(enumerate(reader, 2))
    except UnicodeDecodeError as e:
        raise CaptionsError(f"{csv_path} is not UTF-8 text ({e.reason}): save it as \"CSV UTF-8\"; "
                            "nothing was changed") from e  # fmt: skip
    except csv.Error as e:
        raise CaptionsError(f"{csv_path} is not a readable CSV ({e}); nothing was changed") from e
    if missing:
        raise CaptionsError(f"{csv_path} has no {', '.join(missing)} column (an import needs "
                            f"{', '.join(REQUIRED_COLUMNS)}; --export writes them all); "
                            "nothing was changed")  # fmt: skip
    edits, problems, seen = [], [], {}
    for n, row in rows:
        cid = (row.get("clip_id") or "").strip()
        try:
            edit = _edit(row, current.get(cid), seen.get(cid))
        except CaptionsError as e:
            problems.append(f"row {n} (clip {cid or 'with no id'}): {e}")
        else:
            edits += [edit] if edit is not None else []
        seen.setdefault(cid, n)
    if problems:
        more = f" ({plural(len(problems) - 1, 'more row')} refused, below)" if len(problems) > 1 else ""
        raise CaptionsError("\n".join([f"{csv_path.name} {problems[0]}; nothing was changed{more}", *problems[1:]]))
    return edits


def _edit(row: dict, current: dict | None, seen_at: int | None) -> Edit | None:
    """One row's edit (``None`` when nothing changed); :class:`CaptionsError` says why the row is refused."""
    if current is None:
        raise CaptionsError("unknown clip id: it is not in this dataset (clip_id must stay as exported)")
    if seen_at is not None:
        raise CaptionsError(f"the clip is in the file twice (first in row {seen_at})")
    if any(row.get(c) is None for c in REQUIRED_COLUMNS):
        raise CaptionsError("the row has fewer cells than the header")
    for col in _FIXED:
        if row.get(col) is not None and row[col].strip() != str(current[col]):
            raise CaptionsError(f"{col} cannot change here (it was {current[col]!r}); only caption and "
                                "transcript are edits")  # fmt: skip
    for col in _TIMES:
        if row.get(col) not in (None, "") and not _same_time(row[col], current[col]):
            raise CaptionsError(f"{col} cannot change here (it was {current[col]}); cut clips differently in "
                                "the footage and rebuild")  # fmt: skip
    caption, transcript = _text(row["caption"]), _text(row["transcript"])
    fields = tuple(k for k, new in (("caption", caption), ("transcript", transcript)) if new != _text(current[k]))
    if not fields:
        return None
    if not caption:
        raise CaptionsError("the caption is empty")
    problem = dialogue_problem(caption, transcript, current["language"])
    if problem is not None:
        raise CaptionsError(problem)
    return Edit(current["clip_id"], caption, transcript, fields)


def _text(cell: str) -> str:
    """A cell as a caption: line ends as ``\\n`` (spreadsheets write ``\\r\\n``), no outer whitespace."""
    return cell.replace("\r\n", "\n").replace("\r", "\n").strip()


def _same_time(cell: str, seconds: float) -> bool:
    try:
        return abs(float(cell) - seconds) < 5e-4
    except ValueError:
        return False


def import_captions(dataset: str | Path, csv_path: str | Path) -> list[Edit]:
    """Apply the edits of ``csv_path`` to ``dataset`` (see the module docstring); returns them. A bad file, or
    encoders that are not the dataset's, raise :class:`CaptionsError` before anything is changed."""
    out = Path(dataset)
    opened = load_dataset_dir(out)
    current = {r["clip_id"]: r for r in opened.dataset.select_columns([c for c in CSV_COLUMNS if c != "thumbnail"])}
    edits = read_edits(csv_path, current)
    if not edits:
        return []
    features = _text_features(opened.manifest, edits) if opened.manifest.get("encoded") else {}
    _rewrite_rows(out, opened.dataset, {e.clip_id: e for e in edits}, features)
    units = _update_cache(out, {e.clip_id: e for e in edits}, features)
    manifest = json.loads((out / MANIFEST).read_text())
    at = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.setdefault("edits", []).extend({"clip_id": e.clip_id, "at": at, "fields": list(e.fields),
                                             "caption": caption_digest(e.caption)} for e in edits)  # fmt: skip
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    if units is not None:
        write_report(units, out)
    return edits


def _text_features(manifest: dict, edits: list[Edit]) -> dict[str, np.ndarray]:
    """The new captions' ``[L, C]`` features, from the text encoder the dataset was built with (only that one)."""
    paths = EncoderPaths(**manifest["encoders"])
    try:
        found = encoders_fingerprint(paths)
    except (OSError, ValueError) as e:
        raise CaptionsError(f"the encoders this dataset was built with cannot be read ({e}); nothing was changed") \
            from e  # fmt: skip
    if found != manifest.get("encoders_fingerprint"):
        raise CaptionsError(f"the encoders the manifest names (text encoder: {paths.text_encoder}) are not those this "
                            f"dataset was built with (fingerprint {found}, the manifest says "
                            f"{manifest.get('encoders_fingerprint')}); nothing was changed")  # fmt: skip
    text = load_text_encoder(paths.text_encoder, "cuda" if torch.cuda.is_available() else "cpu")
    feats, lengths = text.encode([e.caption for e in edits])
    return {e.clip_id: feats[i, : int(lengths[i])].numpy() for i, e in enumerate(edits)}


def _rewrite_rows(out: Path, rows, edits: dict[str, Edit], features: dict[str, np.ndarray]) -> None:
    """Write the rows with the edits beside ``DATASET_DIR/dataset`` and swap them in; a failure leaves the old."""
    import datasets  # noqa: PLC0415 -- heavy: datasets (pyarrow) loads in ~1 s, only writing the Arrow table needs it

    latents = [c for c in (*LATENT_COLUMNS, REFERENCE_LATENTS) if c in rows.column_names]
    source = rows.with_format("numpy", columns=latents, output_all_columns=True)
    cache = Path(tempfile.mkdtemp(prefix=".review-cache.", dir=out))
    try:
        new = datasets.Dataset.from_generator(_edited_rows, features=rows.features, cache_dir=str(cache),
                                              gen_kwargs={"rows": source, "edits": edits, "features": features},
                                              keep_in_memory=False)  # fmt: skip
        with atomic_dir(out / ROWS) as tmp:
            new.save_to_disk(str(tmp))
        del new
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _edited_rows(rows, edits: dict[str, Edit], features: dict[str, np.ndarray]):
    for row in rows:
        edit = edits.get(row["clip_id"])
        if edit is not None:
            row = {**row, "caption": edit.caption, "transcript": edit.transcript}
            if edit.clip_id in features:
                row[TEXT_EMBEDS] = features[edit.clip_id]
        yield row


def _update_cache(out: Path, edits: dict[str, Edit], features: dict[str, np.ndarray]) -> list[Unit] | None:
    """Put the edits in ``.work`` (units, and the text features of up-to-date latents), so that a rebuild keeps
    them without encoding again; returns the units, or ``None`` when the dataset has no build cache."""
    work = out / ".work"
    if not (work / "units.json").is_file():
        return None
    units = [Unit.from_json(u) for u in json.loads((work / "units.json").read_text())]
    for unit in units:
        if not any(c.clip_id in edits for c in unit.clips):
            continue
        clips = []
        for c in unit.clips:
            e = edits.get(c.clip_id)
            new = c if e is None else replace(c, caption=e.caption, transcript=e.transcript)
            lat = work / "latents" / f"{c.clip_id}.safetensors"
            if e is not None and c.clip_id in features and latents_key(lat) == clip_key(c, unit.inputs):
                tensors = {**load_file(lat), TEXT_EMBEDS: torch.from_numpy(features[c.clip_id])}
                atomic_save_file(tensors, lat, metadata={"key": clip_key(new, unit.inputs)})
            clips.append(new)
        unit.clips = clips
        if (work / "units" / unit_name(unit.file)).is_file():
            atomic_write_text(work / "units" / unit_name(unit.file), json.dumps(unit.to_json(), ensure_ascii=False))
    atomic_write_text(work / "units.json", json.dumps([u.to_json() for u in units], ensure_ascii=False))
    return units


__all__ = ["CSV_COLUMNS", "REQUIRED_COLUMNS", "THUMBNAILS", "CaptionsError", "Edit", "dialogue_problem",
           "export_captions", "import_captions", "read_edits"]  # fmt: skip
