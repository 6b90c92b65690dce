"""The flow-matching objective: the maths, what enters the loss and what does not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hhtune.recipe import LossSection
from hhtune.training.data import TrainingDataset
from hhtune.training.objective import (
    flow_matching_loss,
    noise_generator,
    sample_generator,
    shift_sigma,
    video_frame_weights,
)


class Recorder(torch.nn.Module):
    """Returns fixed predictions and records what the objective fed the model."""

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.value = value
        self.calls = []

    def forward(self, video, audio, text, *, text_lengths, audio_lengths):  # noqa: ARG002 -- the model's forward signature
        self.calls.append(dict(video=video.clone(), audio=audio.clone(), text_lengths=text_lengths.clone()))
        return torch.full_like(video, self.value), torch.full_like(audio, self.value)


def test_shift_reproduces_the_official_schedule():
    sched = json.loads((Path(__file__).parents[1] / "fixtures" / "official_schedules.json").read_text())
    for steps in (8, 32):
        t = torch.linspace(0.999, 0.0, steps + 1, dtype=torch.float64)  # the sampler's unshifted times
        ref = torch.tensor(sched[f"steps_{steps}_shift_5"]["sigmas"], dtype=torch.float64)
        torch.testing.assert_close(shift_sigma(t, 5.0), ref, atol=1e-6, rtol=0)


def test_noising_and_target_match_hand_computation(synthetic_dataset):
    data = TrainingDataset(synthetic_dataset)
    batch = data.collate(data.groups[next(iter(data.groups))][:1], index=3)
    cfg = LossSection(speech_weight=1.0)
    model = Recorder(0.0)
    out = flow_matching_loss(model, batch, cfg, seed=11, caption_dropout=0.0)
    g = sample_generator(11, 3, 0)
    u = torch.rand((), generator=g)
    sigma = shift_sigma(u.clamp(1e-5, 1 - 1e-5), 5.0)
    g_noise = noise_generator(11, 3, 0, "cpu")
    noise_v = torch.randn(batch.video.shape[1:], generator=g_noise)
    noise_a = torch.randn(batch.audio.shape[1:], generator=g_noise)
    x_v = (1 - sigma) * batch.video[0] + sigma * noise_v
    torch.testing.assert_close(model.calls[0]["video"][0], x_v)
    torch.testing.assert_close(model.calls[0]["audio"][0], (1 - sigma) * batch.audio[0] + sigma * noise_a)
    # zero prediction: the loss is the mean square of the target v = noise - x0
    torch.testing.assert_close(out.video_loss, (noise_v - batch.video[0]).square().mean())
    torch.testing.assert_close(out.audio_loss, (noise_a - batch.audio[0]).square().mean())
    assert float(out.sigmas[0]) == pytest.approx(float(sigma))


def test_noise_is_drawn_on_the_batch_device_from_the_sample_generators(synthetic_dataset, monkeypatch):
    """Latent-sized noise is made where the batch lives (no host tensor copied over), by per-sample generators there."""
    data = TrainingDataset(synthetic_dataset)
    batch = data.collate(data.groups[next(iter(data.groups))][:2], index=0)
    draws, randn = [], torch.randn

    def recording_randn(*args, **kwargs):
        out = randn(*args, **kwargs)
        if out.dim() > 0:  # noise, not a scalar choice
            draws.append((kwargs.get("device"), kwargs.get("generator")))
        return out

    monkeypatch.setattr(torch, "randn", recording_randn)
    flow_matching_loss(Recorder(), batch, LossSection(), seed=0, caption_dropout=0.0)
    assert len(draws) == 2 * batch.size  # video and audio noise per sample
    assert all(torch.device(dev) == batch.video.device for dev, _ in draws)
    assert all(g is not None and g.device == batch.video.device for _, g in draws)
    assert len({id(g) for _, g in draws}) == batch.size  # one generator per sample


def test_same_seed_same_loss_other_batch_index_other_noise(synthetic_dataset):
    data = TrainingDataset(synthetic_dataset)
    rows = data.groups[next(iter(data.groups))]
    cfg = LossSection()
    a = flow_matching_loss(Recorder(), data.collate(rows, 5), cfg, seed=0, caption_dropout=0.0)
    b = flow_matching_loss(Recorder(), data.collate(rows, 5), cfg, seed=0, caption_dropout=0.0)
    c = flow_matching_loss(Recorder(), data.collate(rows, 6), cfg, seed=0, caption_dropout=0.0)
    assert torch.equal(a.loss, b.loss) and not torch.equal(a.loss, c.loss)


def test_audio_padding_never_enters_the_loss(synthetic_dataset):
    data = TrainingDataset(synthetic_dataset)
    batch = data.collate(data.groups[next(iter(data.groups))][:2], 0)
    short = dataclasses.replace(batch, audio_lengths=torch.tensor([batch.audio.shape[1], 3]))
    poisoned = dataclasses.replace(short, audio=short.audio.clone())
    poisoned.audio[1, 3:] = 1e6
    cfg = LossSection()
    a = flow_matching_loss(Recorder(0.5), short, cfg, seed=0, caption_dropout=0.0)
    b = flow_matching_loss(Recorder(0.5), poisoned, cfg, seed=0, caption_dropout=0.0)
    torch.testing.assert_close(a.loss, b.loss)


def test_image_to_video_pins_the_first_frame_and_drops_it_from_the_loss(synthetic_dataset):
    data = TrainingDataset(synthetic_dataset)
    rows = data.groups[next(iter(data.groups))][:1]
    batch = data.collate(rows, 0)
    model = Recorder(0.0)
    cfg = LossSection(i2v_probability=1.0)
    out = flow_matching_loss(model, batch, cfg, seed=0, caption_dropout=0.0)
    assert torch.equal(model.calls[0]["video"][:, :, :1], batch.reference)
    # the pinned frame's error does not count: poisoning it changes nothing
    poisoned = dataclasses.replace(batch, video=batch.video.clone(), reference=batch.reference.clone())
    poisoned.video[:, :, 0] += 100.0
    out2 = flow_matching_loss(Recorder(0.0), poisoned, cfg, seed=0, caption_dropout=0.0)
    torch.testing.assert_close(out.video_loss, out2.video_loss)
    # control: without image-to-video the same poisoned frame is predicted and counts
    t2v = LossSection(i2v_probability=0.0)
    clean = flow_matching_loss(Recorder(0.0), batch, t2v, seed=0, caption_dropout=0.0)
    dirty = flow_matching_loss(Recorder(0.0), poisoned, t2v, seed=0, caption_dropout=0.0)
    assert float(dirty.video_loss) > float(clean.video_loss) + 100.0


def test_caption_dropout_removes_the_text(synthetic_dataset):
    data = TrainingDataset(synthetic_dataset)
    batch = data.collate(data.groups[next(iter(data.groups))], 0)
    model = Recorder()
    flow_matching_loss(model, batch, LossSection(), seed=0, caption_dropout=1.0)
    assert model.calls[0]["text_lengths"].eq(0).all()
    flow_matching_loss(model, batch, LossSection(), seed=0, caption_dropout=0.0)
    assert torch.equal(model.calls[1]["text_lengths"], batch.text_lengths)


def test_speech_weighting_covers_the_vae_frame_groups():
    mask = torch.zeros(1, 9)
    mask[0, 5] = 1.0  # frame 5 lies in latent frame 2 (frames 5..8)
    w = video_frame_weights(mask, 3, speech_weight=3.0)
    assert w.tolist() == [[1.0, 1.0, 3.0]]
    assert video_frame_weights(mask, 3, 1.0).tolist() == [[1.0, 1.0, 1.0]]
