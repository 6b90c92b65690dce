"""Reading data_prep datasets and cutting them into reproducible bucketed batches."""

from __future__ import annotations

import json

import pytest
import torch

from hhtune.recipe import DataSection
from hhtune.training.data import DatasetError, MicroBatches, TrainingDataset, loader_options
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


class _NoRowReads:
    def __getitem__(self, key):
        raise AssertionError(f"row {key} read as nested Python lists")


def test_collate_gives_float32_tensors_equal_to_the_stored_values(tmp_path):
    """Batches come from Arrow as arrays (not nested lists), and every value is the stored one."""
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "d", clips=3, text_len=(2, 9), with_reference=True))
    rows = [data.ds[i] for i in (2, 0, 1)]  # the plain (Python list) reading
    data.ds = _NoRowReads()  # collate must not read rows as Python lists
    batch = data.collate([2, 0, 1], 7)
    assert batch.index == 7 and batch.video.dtype == batch.text.dtype == torch.float32
    for b, row in enumerate(rows):
        torch.testing.assert_close(batch.video[b], torch.tensor(row["video_latents"]), rtol=0, atol=0)
        torch.testing.assert_close(batch.reference[b], torch.tensor(row["reference_latents"]), rtol=0, atol=0)
        n = int(batch.text_lengths[b])
        torch.testing.assert_close(batch.text[b, :n], torch.tensor(row["text_embeds"]), rtol=0, atol=0)
        torch.testing.assert_close(batch.audio[b], torch.tensor(row["audio_latents"]), rtol=0, atol=0)
        torch.testing.assert_close(batch.speech_mask[b], torch.tensor(row["speech_mask"]), rtol=0, atol=0)
    assert data.text_channels == 32


def test_loader_options_by_device():
    """Workers, pinned memory and persistent workers on CUDA by default; none of them on the CPU."""
    assert loader_options(DataSection(dataset="d"), "cpu") == {"num_workers": 0, "pin_memory": False,
                                                               "persistent_workers": False}  # fmt: skip
    cuda = loader_options(DataSection(dataset="d"), torch.device("cuda", 0))
    assert 1 <= cuda["num_workers"] <= 4 and cuda["pin_memory"] and cuda["persistent_workers"]
    assert DataSection(dataset="d").workers("cuda", cpus=2) == 2
    assert DataSection(dataset="d").workers("cuda", cpus=64) == 4
    explicit = loader_options(DataSection(dataset="d", num_workers=3), "cpu")
    assert explicit["num_workers"] == 3 and explicit["persistent_workers"] and not explicit["pin_memory"]


def test_worker_processes_give_the_same_batches(tmp_path):
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "d", clips=4, buckets=2, with_reference=True))
    batches = MicroBatches(data, seed=3, batch_size=2, repeat=1, start=0, world=1, count=4)
    opts = loader_options(DataSection(dataset="d", num_workers=2), "cpu")
    loaded = list(torch.utils.data.DataLoader(batches, batch_size=None, **opts))
    for k, got in enumerate(loaded):
        want = batches[k]
        assert got.index == want.index
        for name in ("video", "audio", "text", "text_lengths", "speech_mask", "reference"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0)


def test_dataset_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match=r"no manifest.json.*python -m data_prep build"):
        TrainingDataset(tmp_path)
    path = write_synthetic_dataset(tmp_path / "d", clips=1)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "encoded": False}))
    with pytest.raises(DatasetError, match=r"no latents.*--encode"):
        TrainingDataset(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatasetError, match="format_version 99"):
        TrainingDataset(path)
