"""The clip shapes a data_prep dataset trains on, read from its Arrow columns (no latents are loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHAPE_COLUMNS = ("num_frames", "height", "width")


@dataclass(frozen=True)
class DatasetShapes:
    """The distinct ``(num_frames, height, width)`` buckets of a dataset and how many clips it holds."""

    path: Path
    buckets: tuple[tuple[int, int, int], ...]
    clips: int

    @property
    def longest_frames(self) -> int:
        """Frames of the longest clip."""
        return max(f for f, _, _ in self.buckets)


def dataset_shapes(dataset_dir: str | Path) -> DatasetShapes | None:
    """The buckets of ``DATASET_DIR`` (as ``data_prep build`` writes it), or ``None`` when it has no ``dataset/``.

    Raises ``ValueError`` naming the problem when the folder exists but its columns cannot be read.
    """
    path = Path(dataset_dir)
    arrow = path / "dataset"
    if not arrow.is_dir():
        return None
    import datasets  # noqa: PLC0415 -- heavy: datasets (pyarrow) loads in ~1 s, only a dataset that exists needs it

    try:
        ds = datasets.load_from_disk(str(arrow))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{arrow} cannot be read as a data_prep dataset ({e})") from None
    missing = [c for c in SHAPE_COLUMNS if c not in ds.column_names]
    if missing or len(ds) == 0:
        why = f"lacks columns {missing}" if missing else "has no clips"
        raise ValueError(f"{arrow} {why}: the plan reads the training clip shapes from it")
    cols = ds.select_columns(list(SHAPE_COLUMNS)).to_dict()
    buckets = sorted({(int(f), int(h), int(w)) for f, h, w in zip(*(cols[c] for c in SHAPE_COLUMNS))})
    return DatasetShapes(path=path, buckets=tuple(buckets), clips=len(ds))
