"""The whole build: discover footage, stages 1-7 in worker processes, encode, write the dataset and report.

``DATASET_DIR`` layout: ``dataset/`` (Arrow, ``save_to_disk``), ``manifest.json``,
``report.json``, ``report.html``, ``alignments/`` (JSON + TextGrid per clip) and the
resumable cache ``.work/``: ``units/`` (one JSON per footage file: its fate and clips),
``units.json`` (the index of the last stages 1-7 run), ``clips/`` (frames + 51200 Hz stereo
audio per clip, ``.npz``), ``latents/`` (``.safetensors`` per clip, keyed by content and
encoders) and ``settings.json``. Everything is written to a temporary name and renamed, so a
killed build leaves only whole files (and ``.*.tmp`` leftovers, removed on the next run).
"""

from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from hhtune.io import atomic_write_text
from hhtune.media import VIDEO_EXTENSIONS, MediaError, probe
from hhtune.progress import ProgressBar
from hhtune.quiet import quiet_dependencies

from .checks import check_environment, unusable_transcripts
from .config import DataConfig
from .prepare import CLIP_METADATA_KEYS, CLIP_ROWS, METADATA_KEYS, input_fingerprint, prepare_file
from .transcripts import TRANSCRIPT_SUFFIXES
from .units import Unit, unit_name

_AUDIO = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus")
# Files that go with footage and are not footage themselves (never reported as skipped).
_SIDECARS = (*TRANSCRIPT_SUFFIXES, ".caption", ".json", ".jsonl", ".csv", ".png", ".jpg", ".jpeg", ".webp", ".yaml",
             ".yml", ".md", ".py")  # fmt: skip


class BuildError(ValueError):
    """The build cannot start or go on; the message says what to do."""


def discover(footage: Path) -> tuple[list[str], list[Unit]]:
    """Candidate footage files (relative paths) and the files skipped outright, with reasons.

    Every file is one or the other, except the companions of footage: ``metadata.jsonl``/``.csv`` and files named
    like a video with a sidecar suffix (``clip.srt``, ``clip.caption``, ``clip.png``). A loose sidecar-type file
    (``logo.png``) is reported as skipped; :func:`prepare_all` takes back those named as a ``reference_image``.
    """
    if not footage.is_dir():
        raise BuildError(f"footage folder not found: {footage}")
    files = [p for p in sorted(footage.rglob("*"))
             if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts]  # fmt: skip
    videos = {p.with_suffix("") for p in files if p.suffix.lower() in VIDEO_EXTENSIONS}
    found, skipped = [], []
    for p in files:
        rel = str(p.relative_to(footage))
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(rel)
        elif p.suffix.lower() in _AUDIO:
            skipped.append(Unit(rel,
                                reason=f"audio-only file ({p.suffix}): HappyHorse learns picture and sound together"))
        elif p.suffix.lower() not in _SIDECARS:
            skipped.append(Unit(rel, reason=f"not a video file ({p.suffix or 'no extension'})"))
        elif not (p.parent == footage and p.stem == "metadata") and not _companion(p, videos):
            skipped.append(Unit(rel, reason=f"not a video file ({p.suffix}), and no video of the same name"))
    return found, skipped


def _companion(path: Path, videos: set[Path]) -> bool:
    """Whether ``path`` is named like one of ``videos`` (their paths without suffix) plus a sidecar suffix."""
    name = path.name.lower()
    return any(v.parent == path.parent and name.startswith(v.name.lower() + ".") for v in videos)


def load_metadata(footage: Path) -> tuple[dict[str, dict], list[Unit]]:
    """Rows of ``metadata.jsonl`` or ``metadata.csv`` keyed by ``file_name``, and the rows that were refused
    (a path leaving the footage folder, a file that is not there), as report entries.

    A row with ``start_s`` and ``end_s`` describes the clips of that time range (the clips whose middle it holds):
    such rows are kept, checked and sorted, under their file's :data:`~data_prep.prepare.CLIP_ROWS` key. An
    unparseable metadata file, an unknown key or a bad range stops the build: silently losing every language and
    caption would be worse.
    """
    out, refused, clip_rows = {}, [], {}
    root = footage.resolve()
    for where, row in _read_rows(footage):
        name = row.get("file_name")
        if not name or not isinstance(name, str):
            raise BuildError(f"{where}: a metadata row needs a file_name (the footage file it describes): {row}")
        per_clip = "start_s" in row or "end_s" in row
        if unknown := sorted(set(row) - set(CLIP_METADATA_KEYS if per_clip else METADATA_KEYS)):
            allowed = (f"allowed in a row for the clips of a time range: {', '.join(CLIP_METADATA_KEYS)}" if per_clip
                       else f"allowed: {', '.join(METADATA_KEYS)}; and start_s, end_s for the clips of a time range")
            raise BuildError(f"{where}: unknown metadata key(s) {', '.join(map(repr, unknown))} ({name}); {allowed} "
                             "(see docs/data.md)")  # fmt: skip
        target = (footage / name).resolve()
        if root not in target.parents:
            refused.append(Unit(name, reason=f"{where}: file_name points outside the footage folder; row ignored"))
        elif not target.is_file():
            refused.append(Unit(name, reason=f"{where}: metadata names a file that is not in the footage folder"))
        elif per_clip:
            clip_rows.setdefault(str(target.relative_to(root)), []).append((where, row))
        else:
            out[str(target.relative_to(root))] = row
    for rel, rows in clip_rows.items():
        out[rel] = {**out.get(rel, {"file_name": rel}), CLIP_ROWS: _clip_rows(footage, rel, rows)}
    return out, refused


def _read_rows(footage: Path) -> list[tuple[str, dict]]:
    """The rows of ``metadata.jsonl`` (else ``metadata.csv``, empty cells left out), each with where it is
    (``metadata.jsonl:3``)."""
    rows: list[tuple[str, dict]] = []
    jsonl, csv_path = footage / "metadata.jsonl", footage / "metadata.csv"
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BuildError(f"{jsonl}:{n}: not valid JSON ({e})") from e
                if not isinstance(row, dict):
                    raise BuildError(f"{jsonl}:{n}: each line must be a JSON object")
                rows.append((f"metadata.jsonl:{n}", row))
    elif csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [(f"metadata.csv:{n}", {k: v for k, v in r.items() if v not in (None, "")})
                    for n, r in enumerate(csv.DictReader(f), 2)]  # fmt: skip
    return rows


def _clip_rows(footage: Path, name: str, rows: list[tuple[str, dict]]) -> list[dict]:
    """The per-clip rows (``where``, row) of the footage file ``name``, their ranges checked (seconds, ``0 <= start_s
    < end_s``, starting inside the file, not overlapping each other), sorted by start, without ``file_name``."""
    try:
        duration = probe(footage / name).duration
    except MediaError:
        duration = None  # an unreadable file is reported as skipped; its ranges cannot be checked
    ranges = []
    for where, row in rows:
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except KeyError as e:
            raise BuildError(f"{where}: a row for the clips of one time range of {name} needs both start_s and "
                             f"end_s (seconds); it has no {e.args[0]}") from None  # fmt: skip
        except (TypeError, ValueError):
            raise BuildError(f"{where}: start_s and end_s must be seconds (numbers), not {row['start_s']!r} and "
                             f"{row['end_s']!r} ({name})") from None  # fmt: skip
        if not 0 <= start < end:
            raise BuildError(f"{where}: the range {start:g}-{end:g} s of {name} is not a time range: start_s must "
                             "be 0 or more and end_s after it")  # fmt: skip
        if duration is not None and start >= duration:
            raise BuildError(f"{where}: the range {start:g}-{end:g} s lies outside {name}, which is {duration:.2f} s "
                             "long")  # fmt: skip
        values = {k: v for k, v in row.items() if k not in ("file_name", "start_s", "end_s")}
        ranges.append((start, end, where, values))
    ranges.sort(key=lambda r: r[:2])
    for (a0, a1, a_where, _), (b0, b1, b_where, _) in itertools.pairwise(ranges):
        if b0 < a1:
            raise BuildError(f"{b_where}: the range {b0:g}-{b1:g} s of {name} overlaps {a_where}'s "
                             f"({a0:g}-{a1:g} s): a clip takes the one row whose range holds its middle")  # fmt: skip
    return [{"start_s": start, "end_s": end, **values} for start, end, _, values in ranges]


def prepare_all(footage: Path, out: Path, cfg: DataConfig, *, rebuild: bool = False, progress: bool = True,
                redo: list[str] | None = None) -> list[Unit]:  # fmt: skip
    """Stages 1-7 for every file not already done; returns every unit (skipped files included).

    A unit is reused when its inputs (file, sidecars, metadata row, settings) are unchanged;
    ``redo`` names files to do again regardless.
    """
    check_environment()  # before any file: a missing ffmpeg/espeak-ng/package must not make every file "skipped"
    footage, out = Path(footage), Path(out)
    work = out / ".work"
    settings = {"data_fingerprint": cfg.fingerprint(), "footage": str(footage.resolve())}
    stamp = work / "settings.json"
    if rebuild and work.exists():
        shutil.rmtree(work)
    if stamp.is_file() and json.loads(stamp.read_text()) != settings:
        raise BuildError(
            f"{work} was built from other footage or settings ({json.loads(stamp.read_text())}); "
            "pass --rebuild to start over instead of mixing stale clips in"
        )
    for leftover in work.rglob(".*.tmp") if work.exists() else []:  # writes cut off by a kill
        leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover, ignore_errors=True)
    (work / "units").mkdir(parents=True, exist_ok=True)
    (work / "clips").mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(settings))
    files, skipped = discover(footage)
    meta, refused = load_metadata(footage)
    references = {str((footage / r["reference_image"]).resolve()) for r in meta.values() if r.get("reference_image")}
    skipped = [u for u in skipped if str((footage / u.file).resolve()) not in references]  # used as reference images
    units: dict[str, Unit] = {}
    todo = []
    for rel in files:
        done = _done_unit(work / "units" / unit_name(rel), footage / rel, meta.get(rel, {}), cfg)
        if done is not None and rel not in (redo or []):
            units[rel] = done
        else:
            todo.append(rel)
    if todo:
        # spawn, not fork: forking a process whose torch/OpenMP threads already run can deadlock the child
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx,
                                 initializer=_worker_init) as pool, \
                ProgressBar("stages 1-7", len(todo), enabled=progress) as bar:  # fmt: skip
            futures = {pool.submit(prepare_file, footage / rel, rel, meta.get(rel, {}), cfg, work): rel for rel in todo}
            for fut in as_completed(futures):
                units[futures[fut]] = fut.result()
                bar.advance()
    everything = [units[rel] for rel in files] + skipped + refused
    if warning := unusable_transcripts(everything):
        print(f"warning: {warning}", file=sys.stderr)
    atomic_write_text(work / "units.json", json.dumps([u.to_json() for u in everything], ensure_ascii=False))
    return everything


def _worker_init() -> None:
    """One thread per worker process: the parallelism is the pool's, not torch's (no oversubscription). Dependency
    notices are filtered here too: a spawned worker does not inherit the main process's filters."""
    torch.set_num_threads(1)
    quiet_dependencies()


def _done_unit(path: Path, source: Path, meta: dict, cfg: DataConfig) -> Unit | None:
    """A finished unit whose inputs are unchanged, else ``None`` (missing, stale or unreadable)."""
    if not path.is_file():
        return None
    try:
        unit = Unit.from_json(json.loads(path.read_text()))
        return unit if unit.inputs == input_fingerprint(source, meta, cfg) else None
    except (OSError, ValueError, KeyError, TypeError):  # Key/TypeError: a unit written in another layout
        return None


def build(footage: str | Path, out: str | Path, cfg: DataConfig, *, encode: bool = False, rebuild: bool = False,
          progress: bool = True, reencode: bool = False) -> Path:  # fmt: skip
    """The whole build; re-running resumes. Returns ``DATASET_DIR``.

    Under ``accelerate launch`` stages 1-7 run on the main process (in its worker pool), the
    encoding is split across processes, and the main process writes the dataset and report.
    """
    from .dataset import write_dataset  # noqa: PLC0415 -- pool workers import this module; the dataset writer and report stay out of them
    from .report import write_report  # noqa: PLC0415 -- pool workers import this module; the dataset writer and report stay out of them

    footage, out = Path(footage), Path(out)
    state = None
    if encode:
        from accelerate import PartialState  # noqa: PLC0415 -- only encoding runs under accelerate; pool workers import this module

        state = PartialState()
    main = state is None or state.is_main_process
    if main:
        units = prepare_all(footage, out, cfg, rebuild=rebuild, progress=progress)
        if cfg.captioner is not None:
            from .captioner.stage import caption_units  # noqa: PLC0415 -- pool workers import this module; the captioner loads torch/openai

            units = caption_units(units, footage, out, cfg, load_metadata(footage)[0], progress=progress)
    if state is not None:
        state.wait_for_everyone()
    if not main:
        units = load_units(out)
    encoders = None
    if encode:
        from .encode import encode_clips, resolve_encoders  # noqa: PLC0415 -- only encoding needs the encoders; pool workers import this module

        if main:
            encoders = resolve_encoders(cfg, out)
        state.wait_for_everyone()
        encoders = resolve_encoders(cfg, out)
        encode_clips(units, out / ".work", encoders, cfg, progress=progress and main, reencode=reencode,
                     footage=footage)  # fmt: skip
    if main:
        write_dataset(units, out, cfg, encoders, footage=footage)
        write_report(units, out)
    return out


def load_units(out: Path) -> list[Unit]:
    """The units of the last finished stages 1-7 run (``.work/units.json``), in report order.

    Only the index is read, so units of files since removed from the footage are not picked up.
    """
    index = Path(out) / ".work" / "units.json"
    if not index.is_file():
        raise BuildError(f"{out} has no finished stages 1-7 yet: run `python -m data_prep prepare FOOTAGE --out {out}`")
    return [Unit.from_json(u) for u in json.loads(index.read_text())]


__all__ = ["BuildError", "build", "discover", "load_metadata", "load_units", "prepare_all"]
