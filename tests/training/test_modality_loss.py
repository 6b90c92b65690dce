"""Audio noise of its own (``loss.audio_sigma``) and balanced modalities (``loss.balance``).

The defaults (``tied``, ``none``) must leave today's runs bit for bit as they were: the numbers
in ``fixtures/tied_reference.json`` were computed by the code before either setting existed
(``_tied_reference.py`` writes them).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _runs import _adapter, _recipe
from _tied_reference import RUN, Affine, objective_numbers, run_numbers
from scipy import stats

from hhtune.recipe import LossSection, RecipeError, validate_recipe
from hhtune.training import Callback, TrainingDataset, flow_matching_loss, train
from hhtune.training.balance import EmaBalance
from hhtune.training.objective import noise_generator, sample_generator, shift_sigma, sigma_bucket
from hhtune.training.synthetic import write_synthetic_dataset

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "tied_reference.json").read_text())
_QUIET = {"validation": {"at_end": False}, "export": {"formats": []}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", clips=4, buckets=2, with_reference=True)


# -- tied: today's numbers, bit for bit ------------------------------------------------------------------------------


def test_tied_objective_reproduces_the_numbers_of_the_code_before_audio_sigma(dataset):
    assert objective_numbers(dataset) == REFERENCE["objective"]  # exact float equality, every loss and sigma


def test_tied_run_logs_the_losses_of_the_code_before_audio_sigma(dataset, tmp_path):
    assert run_numbers(dataset, tmp_path / "run") == REFERENCE["run"]


# -- independent: the draws ------------------------------------------------------------------------------------------


def _draws(dataset, cfg: LossSection, batches: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Video and audio sigmas the objective drew over ``batches`` micro-batches of 2 clips."""
    data = TrainingDataset(dataset)
    batch = data.collate(next(iter(data.groups.values()))[:2], 0)
    video, audio = [], []
    for index in range(batches):  # the draws depend on (seed, batch index, row) only
        out = flow_matching_loss(Affine(), dataclasses.replace(batch, index=index), cfg, seed=1, caption_dropout=0.0)
        video += out.sigmas.tolist()
        audio += out.audio_sigmas.tolist()
    return np.array(video), np.array(audio)


def _unshift(sigma: np.ndarray, shift: float) -> np.ndarray:
    """The draw ``u`` in (0, 1) before the shift ``shift * u / (1 + (shift - 1) * u)``."""
    return sigma / (shift - (shift - 1) * sigma)


def test_independent_audio_sigmas_follow_their_own_distribution_uncorrelated_with_video(dataset):
    cfg = LossSection(audio_sigma="independent", audio_sigma_distribution="logit_normal", audio_logit_normal_mean=0.5,
                      audio_logit_normal_std=0.7, audio_shift=2.0)
    video, audio = _draws(dataset, cfg)
    assert abs(np.corrcoef(video, audio)[0, 1]) < 0.1  # 800 pairs: |r| of independent draws is ~0.035
    assert stats.kstest(_unshift(video, 5.0), "uniform").pvalue > 0.01  # video: uniform, shift 5, as before
    u = _unshift(audio, 2.0)
    assert stats.kstest(np.log(u / (1 - u)), "norm", args=(0.5, 0.7)).pvalue > 0.01  # audio: its own settings
    tied_video, _ = _draws(dataset, LossSection(), batches=50)
    assert np.array_equal(video[:100], tied_video)  # the video's draws are those of a tied run


def test_independent_audio_defaults_to_the_video_distribution_and_tied_audio_is_the_video_sigma(dataset):
    video, audio = _draws(dataset, LossSection(audio_sigma="independent"))
    assert abs(np.corrcoef(video, audio)[0, 1]) < 0.1
    assert stats.kstest(_unshift(audio, 5.0), "uniform").pvalue > 0.01
    video, audio = _draws(dataset, LossSection(), batches=50)
    assert np.array_equal(video, audio)


def test_independent_audio_is_noised_at_its_own_sigma(dataset):
    data = TrainingDataset(dataset)
    batch = data.collate(next(iter(data.groups.values()))[:1], index=4)
    recorded = []

    class Recorder(torch.nn.Module):
        def forward(self, video, audio, text, *, text_lengths, audio_lengths):  # noqa: ARG002 -- the model's forward
            recorded.append((video.clone(), audio.clone()))
            return torch.zeros_like(video), torch.zeros_like(audio)

    cfg = LossSection(audio_sigma="independent", audio_shift=2.0)
    out = flow_matching_loss(Recorder(), batch, cfg, seed=7, caption_dropout=0.0)
    g = sample_generator(7, 4, 0)
    sigma = shift_sigma(torch.rand((), generator=g).clamp(1e-5, 1 - 1e-5), 5.0)
    torch.rand((), generator=g), torch.rand((), generator=g)  # caption dropout, image-to-video
    sigma_a = shift_sigma(torch.rand((), generator=g).clamp(1e-5, 1 - 1e-5), 2.0)
    g_noise = noise_generator(7, 4, 0, "cpu")
    noise_v = torch.randn(batch.video.shape[1:], generator=g_noise)
    noise_a = torch.randn(batch.audio.shape[1:], generator=g_noise)
    torch.testing.assert_close(recorded[0][0][0], (1 - sigma) * batch.video[0] + sigma * noise_v)
    torch.testing.assert_close(recorded[0][1][0], (1 - sigma_a) * batch.audio[0] + sigma_a * noise_a)
    assert float(out.audio_sigmas[0]) == pytest.approx(float(sigma_a)) and float(sigma_a) != pytest.approx(float(sigma))


def test_independent_run_logs_losses_by_the_pair_of_sigmas(dataset, tmp_path):
    run = {**RUN, "loss": {**RUN["loss"], "audio_sigma": "independent"}}
    recipe = validate_recipe(_recipe(dataset, tmp_path / "run", **run))
    records = [json.loads(ln) for ln in (train(recipe, log=lambda *_: None) / "metrics.jsonl").read_text().splitlines()]
    buckets = {k for r in records for k in r if k.startswith("loss_sigma_")}
    assert buckets and all(k.count("-") == 2 and "_audio_" in k for k in buckets), buckets
    assert sigma_bucket(0.3, audio=0.9) == "sigma_0.25-0.50_audio_0.75-1.00"
    assert sigma_bucket(0.3) == "sigma_0.25-0.50"


def test_audio_sigma_settings_without_independent_are_refused():
    with pytest.raises(RecipeError, match=r"loss.audio_shift set with loss.audio_sigma: tied.*independent or remove"):
        validate_recipe({"model": {"preset": "tiny"}, "data": {"dataset": "d"}, "loss": {"audio_shift": 2.0}})
    assert LossSection(audio_sigma="independent", audio_shift=2.0).sigma_settings("audio") == (
        "uniform", 0.0, 1.0, 2.0)


# -- balance: ema ----------------------------------------------------------------------------------------------------


def test_ema_weights_are_the_configured_ones_over_the_bias_corrected_running_means():
    decay, losses = 0.9, [(2.0, 20.0), (1.0, 10.0), (float("nan"), 5.0), (4.0, 0.5)]
    balance = EmaBalance(decay, "cpu")
    mean, decayed = [0.0, 0.0], 1.0
    for video, audio in losses:
        got = balance.weights(torch.tensor(video), torch.tensor(audio), 1.5, 0.5).tolist()
        if math.isfinite(video) and math.isfinite(audio):  # a non-finite micro-batch leaves the means as they were
            mean = [decay * m + (1 - decay) * x for m, x in zip(mean, (video, audio))]
            decayed *= decay
        assert got == [1.5 / (mean[0] / (1 - decayed)), 0.5 / (mean[1] / (1 - decayed))]  # exact
    first = EmaBalance(decay, "cpu").weights(torch.tensor(2.0), torch.tensor(20.0), 1.0, 1.0).tolist()
    assert first == pytest.approx([1 / 2.0, 1 / 20.0], rel=1e-15)  # the first micro-batch is normalised by itself


def test_ema_loss_is_the_effective_weights_times_the_modality_losses(dataset):
    data = TrainingDataset(dataset)
    batch = data.collate(next(iter(data.groups.values()))[:2], index=0)
    cfg = LossSection(balance="ema", video_weight=2.0, audio_weight=0.5)
    balance = EmaBalance(cfg.balance_decay, "cpu")
    out = flow_matching_loss(Affine(), batch, cfg, seed=0, caption_dropout=0.0, balance=balance)
    w_v, w_a = out.weights.float()
    assert torch.equal(out.loss, w_v * out.video_loss + w_a * out.audio_loss)
    # first micro-batch: each modality's loss over itself, so the loss is the sum of the configured weights
    assert float(out.loss) == pytest.approx(2.5, rel=1e-6)
    plain = flow_matching_loss(Affine(), batch, LossSection(), seed=0, caption_dropout=0.0)
    assert torch.equal(out.video_loss, plain.video_loss) and plain.weights is None


class _Stop(Exception):  # noqa: N818 -- not an error: the test's interruption
    pass


class _StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int) -> None:
        if step == self.step:
            raise _Stop


def test_ema_resume_equals_an_uninterrupted_run(dataset, tmp_path):
    def recipe(out):
        return validate_recipe(_recipe(dataset, out, loss={"balance": "ema", "balance_decay": 0.5},
                                       train={"max_steps": 8}, checkpointing={"every_steps": 4}, **_QUIET))

    whole = train(recipe(tmp_path / "whole"), log=lambda *_: None)
    with pytest.raises(_Stop):
        train(recipe(tmp_path / "cut"), log=lambda *_: None, callbacks=[_StopAfter(6)])
    assert (tmp_path / "cut" / "checkpoints" / "step-00000004" / "balance.pt").is_file()
    resumed = train(recipe(tmp_path / "cut"), log=lambda *_: None)
    a, b = _adapter(whole), _adapter(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    whole_logged = [json.loads(ln) for ln in (whole / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss", "weight_video", "weight_audio")
    assert [[r[k] for k in keys] for r in logged] == [[r[k] for k in keys] for r in whole_logged]
    assert logged[0]["weight_video"] != logged[-1]["weight_video"]  # the weights moved with the running means


def test_an_unknown_balance_mode_names_the_allowed_ones(tmp_path, capsys):
    from hhtune.train import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "data": {"dataset": str(tmp_path)}}))
    assert main([str(recipe), "loss.balance=emma"]) == 2
    err = capsys.readouterr().err
    assert "loss.balance = 'emma': Input should be 'none' or 'ema'" in err and err.startswith("error: "), err
