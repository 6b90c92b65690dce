"""The whole build: discover footage, stages 1-7 in worker processes, encode, write the dataset and report.

``DATASET_DIR`` layout: ``dataset/`` (Arrow, ``save_to_disk``), ``manifest.json``,
``report.json``, ``report.html``, ``alignments/`` (JSON + TextGrid per clip) and the
resumable cache ``.work/`` (``units/``, ``clips/``, ``latents/``, ``settings.json``).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from hhtune.io import atomic_write_text

from .config import DataConfig
from .media import VIDEO_EXTENSIONS
from .prepare import TRANSCRIPT_SUFFIXES, prepare_file, unit_name

FORMAT_VERSION = 1
_SIDECARS = (*TRANSCRIPT_SUFFIXES, ".json", ".jsonl", ".csv", ".png", ".jpg", ".jpeg", ".webp", ".yaml", ".yml", ".md", ".py")


class BuildError(ValueError):
    """The build cannot start or go on; the message says what to do."""


def discover(footage: Path) -> tuple[list[str], list[dict]]:
    """Candidate footage files (relative paths) and the files skipped outright, with reasons."""
    if not footage.is_dir():
        raise BuildError(f"footage folder not found: {footage}")
    found, skipped = [], []
    for p in sorted(footage.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(footage))
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(rel)
        elif p.suffix.lower() not in _SIDECARS:
            skipped.append({"file": rel, "fate": "skipped", "reason": f"not a video file ({p.suffix or 'no extension'})",
                            "clips": [], "notes": []})  # fmt: skip
    return found, skipped


def load_metadata(footage: Path) -> dict[str, dict]:
    """Rows of ``metadata.jsonl`` or ``metadata.csv`` keyed by ``file_name`` (paths may not leave the folder)."""
    rows: list[dict] = []
    jsonl, csv_path = footage / "metadata.jsonl", footage / "metadata.csv"
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BuildError(f"{jsonl}:{n}: not valid JSON ({e})") from e
    elif csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        name = row.get("file_name")
        if not name:
            raise BuildError(f"a metadata row has no file_name: {row}")
        root, target = footage.resolve(), (footage / name).resolve()
        if root not in target.parents:
            raise BuildError(f"metadata file_name {name!r} points outside the footage folder")
        out[str(target.relative_to(root))] = row
    return out


def prepare_all(footage: Path, out: Path, cfg: DataConfig, *, rebuild: bool = False, progress: bool = True) -> list[dict]:
    """Stages 1-7 for every file not already done; returns every unit (skipped files included)."""
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
        leftover.unlink()
    (work / "units").mkdir(parents=True, exist_ok=True)
    (work / "clips").mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(settings))
    files, skipped = discover(footage)
    meta = load_metadata(footage)
    todo = [rel for rel in files if not (work / "units" / unit_name(rel)).is_file()]
    units: dict[str, dict] = {}
    if todo:
        # spawn, not fork: forking a process whose torch/OpenMP threads already run can deadlock the child
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx) as pool, \
                _bar(progress, len(todo)) as bar:  # fmt: skip
            futures = {pool.submit(prepare_file, footage / rel, rel, meta.get(rel, {}), cfg, work): rel for rel in todo}
            for fut in as_completed(futures):
                units[futures[fut]] = fut.result()
                bar.advance()
    for rel in files:
        if rel not in units:
            units[rel] = json.loads((work / "units" / unit_name(rel)).read_text())
    return [units[rel] for rel in files] + skipped


def build(footage: str | Path, out: str | Path, cfg: DataConfig, *, encode: bool = False, rebuild: bool = False,
          progress: bool = True) -> Path:  # fmt: skip
    """The whole build; re-running resumes. Returns ``DATASET_DIR``."""
    from .dataset import write_dataset
    from .report import write_report

    footage, out = Path(footage), Path(out)
    units = prepare_all(footage, out, cfg, rebuild=rebuild, progress=progress)
    encoders = None
    if encode:
        from .encode import encode_clips, resolve_encoders

        encoders = resolve_encoders(cfg, out)
        encode_clips(units, out / ".work", encoders, cfg, progress=progress)
    write_dataset(units, out, cfg, encoders)
    write_report(units, out)
    return out


class _bar:
    """A rich progress bar that can be switched off."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> "_bar":
        if self.enabled:
            from rich.progress import Progress

            self._p = Progress()
            self._p.__enter__()
            self._t = self._p.add_task("stages 1-7", total=self.total)
        return self

    def advance(self) -> None:
        if self.enabled:
            self._p.advance(self._t)

    def __exit__(self, *a) -> None:
        if self.enabled:
            self._p.__exit__(*a)


__all__ = ["BuildError", "FORMAT_VERSION", "build", "discover", "load_metadata", "prepare_all"]
