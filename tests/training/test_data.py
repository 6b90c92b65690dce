"""Reading data_prep datasets and cutting them into reproducible bucketed batches."""

from __future__ import annotations

import json

import pytest

from hhtune.training.data import DatasetError, MicroBatches, TrainingDataset
from hhtune.training.synthetic import write_synthetic_dataset


def test_batches_never_mix_buckets_and_cover_every_clip(tmp_path):
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "d", clips=9, buckets=3))
    batches = data.epoch_batches(epoch=0, seed=1, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(9))
    for b in batches:
        assert len({(data.ds[i]["width"], data.ds[i]["height"]) for i in b}) == 1
    assert batches == data.epoch_batches(epoch=0, seed=1, batch_size=2)
    assert batches != data.epoch_batches(epoch=1, seed=1, batch_size=2)


def test_process_split_equals_accumulation(tmp_path):
    """Two processes' micro-batches interleave to the one-process sequence."""
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "d", clips=6, buckets=2))
    one = MicroBatches(data, seed=0, batch_size=1, repeat=1, start=0, world=1, count=10)
    r0 = MicroBatches(data, seed=0, batch_size=1, repeat=1, start=0, world=2, count=5)
    r1 = MicroBatches(data, seed=0, batch_size=1, repeat=1, start=1, world=2, count=5)
    seq = [one.rows(g) for g in range(10)]
    assert [r0[k].index for k in range(5)] == [0, 2, 4, 6, 8]
    assert [r1.rows(r1[k].index) for k in range(5)] == seq[1::2]


def test_padded_collate(tmp_path):
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "d", clips=3, text_len=(2, 9), seed=4))
    batch = data.collate([0, 1, 2], 0)
    assert batch.text.shape[1] == int(batch.text_lengths.max())
    for b in range(3):
        assert batch.text[b, batch.text_lengths[b] :].abs().sum() == 0


def test_dataset_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="no manifest.json.*python -m data_prep build"):
        TrainingDataset(tmp_path)
    path = write_synthetic_dataset(tmp_path / "d", clips=1)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "encoded": False}))
    with pytest.raises(DatasetError, match="no latents.*--encode"):
        TrainingDataset(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatasetError, match="format_version 99"):
        TrainingDataset(path)
