"""Clips cut from footage with no audio track train the picture only: their audio loss is masked, and datasets of
format 1 (no ``has_audio`` column) still load with every clip counted as having sound."""

from __future__ import annotations

import dataclasses
import json

import torch

from hhtune.contract import HAS_AUDIO_COLUMN
from hhtune.recipe import LossSection
from hhtune.training.data import TrainingDataset
from hhtune.training.objective import flow_matching_loss


class Fixed(torch.nn.Module):
    def forward(self, video, audio, text, *, text_lengths, audio_lengths):  # noqa: ARG002 -- the model's forward signature
        return torch.zeros_like(video), torch.zeros_like(audio)


def _batch(path):
    data = TrainingDataset(path)
    return data.collate(data.groups[next(iter(data.groups))][:2], 0)


def test_a_clip_without_sound_adds_nothing_to_the_audio_loss(synthetic_dataset):
    batch = _batch(synthetic_dataset)
    assert batch.has_audio is not None and bool(batch.has_audio.all())  # the synthetic dataset has no column: sound
    silent = dataclasses.replace(batch, has_audio=torch.tensor([True, False]))
    poisoned = dataclasses.replace(silent, audio=silent.audio.clone())
    poisoned.audio[1] = 1e3  # whatever its audio latents hold, the clip without sound is no audio target
    cfg = LossSection()
    a = flow_matching_loss(Fixed(), silent, cfg, seed=0, caption_dropout=0.0)
    b = flow_matching_loss(Fixed(), poisoned, cfg, seed=0, caption_dropout=0.0)
    torch.testing.assert_close(a.audio_loss, b.audio_loss)
    torch.testing.assert_close(a.video_loss, b.video_loss)  # the picture still trains
    both = flow_matching_loss(Fixed(), dataclasses.replace(poisoned, has_audio=torch.tensor([True, True])), cfg,
                              seed=0, caption_dropout=0.0)  # fmt: skip
    assert both.audio_loss > 100 * a.audio_loss


def test_the_column_reaches_the_batch_and_old_datasets_load(synthetic_dataset):
    import datasets

    ds = datasets.load_from_disk(str(synthetic_dataset / "dataset"))
    assert HAS_AUDIO_COLUMN not in ds.column_names
    manifest = json.loads((synthetic_dataset / "manifest.json").read_text())
    (synthetic_dataset / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    old = TrainingDataset(synthetic_dataset)
    rows = old.groups[next(iter(old.groups))][:2]
    assert old.collate(rows, 0).has_audio.tolist() == [True, True]  # format 1: no column, every clip had sound
    flags = [i != rows[1] for i in range(len(ds))]
    new = synthetic_dataset.parent / "v2"
    ds.add_column(HAS_AUDIO_COLUMN, flags).save_to_disk(str(new / "dataset"))
    (new / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    assert TrainingDataset(new).collate(rows, 0).has_audio.tolist() == [True, False]
