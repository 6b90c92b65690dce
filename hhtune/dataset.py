"""Opening a ``DATASET_DIR``: the one reader of the dataset contract, shared by training and data_prep.

It checks what every user needs before reading a row: ``manifest.json`` is there and names a format version
this hhtune reads (:data:`~hhtune.contract.READABLE_FORMAT_VERSIONS`: an older dataset loads with the columns
added since absent, and the training checks say which option of data_prep adds one a recipe needs), the Arrow
rows load, they have the contract's
columns (and the latent columns when the manifest says ``encoded``), and their count is the
manifest's. Row-by-row checks of the values belong to ``data_prep check``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import FORMAT_VERSION, LATENT_COLUMNS, MANIFEST, META_COLUMNS, READABLE_FORMAT_VERSIONS, ROWS


class DatasetError(ValueError):
    """A ``DATASET_DIR`` that is missing, half-written, stale or not in the format hhtune reads; the message says
    what to do."""


@dataclass
class DatasetDir:
    """An opened ``DATASET_DIR``: its rows (a ``datasets.Dataset``) and its manifest."""

    path: Path
    dataset: Any
    manifest: dict

    @property
    def encoded(self) -> bool:
        """Whether the rows hold latents."""
        return bool(self.manifest.get("encoded"))


def open_dataset_dir(path: str | Path, *, require_encoded: bool = False, fingerprint: str | None = None) -> DatasetDir:
    """Open ``path`` and check its manifest and columns against the contract (see the module docstring).

    ``require_encoded`` refuses a dataset without latents; ``fingerprint`` refuses one built with
    other settings or encoders (the manifest's ``fingerprint`` differs).
    """
    import datasets  # noqa: PLC0415 -- heavy: datasets (pyarrow) loads in ~1 s, only opening the Arrow table needs it

    path = Path(path)
    manifest_path = path / MANIFEST
    encode = " --encode" if require_encoded else ""
    if not manifest_path.is_file():
        raise DatasetError(f"{path} is not a data_prep dataset (no {MANIFEST}); build one with "
                           f"`python -m data_prep build FOOTAGE_DIR --out {path}{encode}`")  # fmt: skip
    manifest = json.loads(manifest_path.read_text())
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        readable = ", ".join(map(str, READABLE_FORMAT_VERSIONS))
        raise DatasetError(f"{path}: dataset format_version {version!r}, this hhtune reads {readable} (writes "
                           f"{FORMAT_VERSION}); rebuild it with this hhtune's data_prep")  # fmt: skip
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        raise DatasetError(f"{path} was built with other settings or encoders (fingerprint "
                           f"{manifest.get('fingerprint')}, expected {fingerprint}); rebuild it")  # fmt: skip
    if require_encoded and not manifest.get("encoded"):
        raise DatasetError(f"{path} has no latents (an encoded dataset is needed); re-run "
                           f"`python -m data_prep build FOOTAGE_DIR --out {path} --encode`")  # fmt: skip
    try:
        rows = datasets.load_from_disk(str(path / ROWS))
    except (FileNotFoundError, ValueError) as e:
        raise DatasetError(f"{path}/{ROWS} is missing or incomplete ({e})") from e
    need = META_COLUMNS + (LATENT_COLUMNS if manifest.get("encoded") else ())
    missing = [c for c in need if c not in rows.column_names]
    if missing:
        raise DatasetError(f"{path}: dataset lacks columns {missing}; rebuild it with this hhtune's data_prep")
    if len(rows) != manifest.get("clips", len(rows)):
        raise DatasetError(f"{path}: manifest says {manifest.get('clips')} clips, the dataset has {len(rows)}")
    return DatasetDir(path, rows, manifest)


__all__ = ["DatasetDir", "DatasetError", "open_dataset_dir"]
