"""The one dataset reader: training and data_prep refuse the same folders with the same words."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest

from data_prep.dataset import load_dataset_dir
from hhtune.contract import MANIFEST, ROWS, TEXT_EMBEDS
from hhtune.dataset import DatasetError, open_dataset_dir
from hhtune.training.data import TrainingDataset
from hhtune.training.synthetic import write_synthetic_dataset


def _readers():
    return (lambda p: open_dataset_dir(p, require_encoded=True), TrainingDataset,
            lambda p: load_dataset_dir(p, require_encoded=True, check_rows=False))  # fmt: skip


def test_a_synthetic_dataset_opens_everywhere(tmp_path):
    path = write_synthetic_dataset(tmp_path / "d", clips=3)
    opened = open_dataset_dir(path, require_encoded=True, fingerprint="synthetic-0")
    assert opened.encoded and len(opened.dataset) == 3 and opened.manifest["fingerprint"] == "synthetic-0"
    assert len(TrainingDataset(path)) == 3 and len(load_dataset_dir(path, check_rows=False).dataset) == 3


@pytest.mark.parametrize("damage,message", [
    ("column", r"lacks columns \['text_embeds'\]"),
    ("count", "manifest says 5 clips, the dataset has 3"),
    ("version", "format_version 99, this hhtune reads 1, 2 \\(writes 2\\)"),
])  # fmt: skip
def test_every_reader_refuses_a_damaged_dataset(tmp_path, damage, message):
    path = write_synthetic_dataset(tmp_path / "d", clips=3)
    manifest = json.loads((path / MANIFEST).read_text())
    if damage == "column":
        rows = datasets.load_from_disk(str(path / ROWS)).remove_columns(TEXT_EMBEDS)
        rows.save_to_disk(str(tmp_path / "rows"))
        del rows
        shutil.rmtree(path / ROWS)
        shutil.move(tmp_path / "rows", path / ROWS)
    else:
        key, value = {"count": ("clips", 5), "version": ("format_version", 99)}[damage]
        (path / MANIFEST).write_text(json.dumps({**manifest, key: value}))
    for read in _readers():
        with pytest.raises(DatasetError, match=message):
            read(path)
