"""The super-resolution objective against the official SR stage: its sigmas, its start points, its audio, crops.

``official_sr_objective.json`` is written by ``make_official_sr_objective_fixture.py`` from the official code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.model.attention import LocalWindow, local_qk_ranges
from hhtune.model.packing import video_coords, window_coords
from hhtune.recipe import LossSection
from hhtune.sampling.samplers import SR_AUDIO_NOISE_SCALE, SR_NOISE_VALUE, SR_STEPS, zero_snr_signal
from hhtune.training.data import Batch
from hhtune.training.objective import noise_generator
from hhtune.training.sr_objective import SR_SHIFT, crop_window, sr_flow_matching_loss, sr_sigmas, sr_start

FIXTURES = Path(__file__).parents[1] / "fixtures"
OFFICIAL = json.loads((FIXTURES / "official_sr_objective.json").read_text())


class Recorder(torch.nn.Module):
    """Predicts zeros and records what the objective fed the model."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, video, audio, text, *, text_lengths, audio_lengths, video_positions=None):  # noqa: ARG002 -- the model's forward signature
        self.calls.append(dict(video=video.clone(), audio=audio.clone(), positions=video_positions))
        return torch.zeros_like(video), torch.zeros_like(audio)


def _batch(bsz=2, frames=5, lr_hw=(4, 6), hr_hw=(8, 12), index=3) -> Batch:
    g = torch.Generator().manual_seed(5)
    t = (frames - 1) // 4 + 1
    return Batch(video=torch.randn(bsz, 48, t, *lr_hw, generator=g), audio=torch.randn(bsz, frames, 64, generator=g),
                 audio_lengths=torch.full((bsz,), frames), text=torch.randn(bsz, 4, 32, generator=g),
                 text_lengths=torch.full((bsz,), 4), speech_mask=torch.zeros(bsz, frames), reference=None,
                 has_reference=torch.zeros(bsz, dtype=torch.bool), index=index,
                 sr_video=torch.randn(bsz, 48, t, *hr_hw, generator=g))  # fmt: skip


def test_the_sigmas_and_levels_are_the_official_sr_stage():
    # mutation: official_sigmas(steps, shift)[1:], or shift 3, in sr_sigmas -> the sigmas differ
    cfg = OFFICIAL["config"]
    assert (SR_NOISE_VALUE, SR_STEPS, SR_SHIFT, SR_AUDIO_NOISE_SCALE) == (
        cfg["noise_value"], cfg["sr_num_inference_steps"], cfg["shift"], cfg["sr_audio_noise_scale"])
    torch.testing.assert_close(sr_sigmas(), torch.tensor(OFFICIAL["sr_sigmas"][:-1]), atol=1e-6, rtol=0)
    # mutation: root[index + 1] in zero_snr_signal -> another signal level
    assert zero_snr_signal(SR_NOISE_VALUE) == pytest.approx(OFFICIAL["renoise_signal"], abs=1e-6)


def test_every_sigma_is_one_the_sr_stage_visits_and_each_is_drawn():
    # mutation: sampling sigma from shift_sigma(uniform) as the first-stage objective -> not in the set
    visited = sr_sigmas()
    seen = set()
    for index in range(40):
        out = sr_flow_matching_loss(Recorder(), _batch(index=index), LossSection(), seed=0, caption_dropout=0.0)
        for s in out.sigmas:
            hit = torch.isclose(visited, s).nonzero()
            assert len(hit) == 1, float(s)
            seen.add(int(hit[0]))
    assert seen == set(range(SR_STEPS))


def _official_start(lr, size, noise):
    """The official SR stage (video_generate.py): trilinear, corners aligned, then latent * sigma + noise * ..."""
    up = F.interpolate(lr, size=(lr.shape[2], *size), mode="trilinear", align_corners=True)
    sigma = OFFICIAL["renoise_signal"]
    return up * sigma + noise * (1 - sigma**2) ** 0.5


def test_start_point_and_audio_are_built_as_the_sr_stage_builds_them():
    batch = _batch()
    model = Recorder()
    out = sr_flow_matching_loss(model, batch, LossSection(), seed=7, caption_dropout=0.0)
    x, heard = model.calls[0]["video"], model.calls[0]["audio"]
    losses = []
    for r in range(batch.size):
        g = noise_generator(7, batch.index, r, "cpu")
        eps = torch.randn(batch.sr_video.shape[1:], generator=g)
        noise_a = torch.randn(batch.audio.shape[1:], generator=g)
        start = _official_start(batch.video[r : r + 1], batch.sr_video.shape[-2:], eps[None])[0]
        torch.testing.assert_close(sr_start(batch.video[r : r + 1], batch.sr_video.shape[-2:], eps[None])[0], start)
        s, hr = float(out.sigmas[r]), batch.sr_video[r]
        # mutations: align_corners=False, or the flow-matching mix (1 - a) * up + a * eps -> not the official start
        torch.testing.assert_close(x[r], (1 - s) * hr + s * start, atol=1e-5, rtol=1e-5)
        # mutation: 0.3 of noise and 0.7 of audio (the scales swapped) -> not what the SR model hears
        torch.testing.assert_close(heard[r], noise_a * 0.7 + batch.audio[r] * 0.3)
        losses.append((start - hr).square().mean())  # zero prediction: the target is z1 - hr
    torch.testing.assert_close(out.video_loss, torch.stack(losses).mean(), atol=1e-5, rtol=1e-5)
    assert float(out.audio_loss) == 0.0  # the SR stage's audio output is not used


def test_crops_are_windows_of_the_full_frame_start_in_whole_patches():
    batch = _batch(bsz=3, hr_hw=(12, 16))
    model = Recorder()
    out = sr_flow_matching_loss(model, batch, LossSection(), seed=2, caption_dropout=0.0, crop=(64, 96))
    x = model.calls[0]["video"]
    assert x.shape[-2:] == (4, 6) and out.tokens == 3 * 2 * 2 * 3 + 3 * 5 + 3 * 4
    full = F.interpolate(batch.video, size=(2, 12, 16), mode="trilinear", align_corners=True)
    a = OFFICIAL["renoise_signal"]
    offsets = set()
    for r in range(3):
        eps = torch.randn(x.shape[1:], generator=noise_generator(2, batch.index, r, "cpu"))
        s = float(out.sigmas[r])
        hits = [(y, xx) for y in range(0, 12 - 4 + 1) for xx in range(0, 16 - 6 + 1) if torch.allclose(
            x[r], (1 - s) * batch.sr_video[r, :, :, y : y + 4, xx : xx + 6]
            + s * (a * full[r, :, :, y : y + 4, xx : xx + 6] + (1 - a**2) ** 0.5 * eps), atol=1e-5)]  # fmt: skip
        # mutation: the upsampled start cut at another window than the target -> no window matches
        assert len(hits) == 1, hits
        # mutation: odd offsets allowed in crop_window -> a window that splits the full frame's 2x2 patches
        assert hits[0][0] % 2 == 0 and hits[0][1] % 2 == 0
        offsets.add(hits[0])
    assert len(offsets) > 1  # each clip draws its own window


def test_crop_window_sizes():
    g = torch.Generator().manual_seed(0)
    assert crop_window((68, 120), None, g) == (0, 0, 68, 120)
    assert crop_window((32, 60), (1088, 1920), g) == (0, 0, 32, 60)  # larger than the clip: the whole frame
    windows = {crop_window((68, 128), (512, 896), g) for _ in range(200)}
    assert {(h, w) for _, _, h, w in windows} == {(32, 56)}
    assert all(t % 2 == 0 and le % 2 == 0 and t + 32 <= 68 and le + 56 <= 128 for t, le, _, _ in windows)
    assert max(t for t, _, _, _ in windows) == 36 and max(le for _, le, _, _ in windows) == 72  # the far edges


def test_a_crop_keeps_the_frames_each_token_sees_in_the_official_ranges():
    """Local attention is a window over frames: a spatial crop changes the tokens per frame, not which frames a
    query's keys come from. Checked against the official calc_local_qk_range of the 1080p shape."""
    path = FIXTURES / "official_forward_tiny_sr.safetensors"
    with safe_open(path, "pt") as f:
        cases = json.loads(f.metadata()["range_cases"])
    ranges = load_file(path)
    i = next(i for i, (nv, _, frames, frf) in enumerate(cases) if frames == 32 and frf == 11 and nv == 32 * 34 * 60)
    nv, nat, frames, frf = cases[i]
    crop_tpf = 16 * 28  # a 512x896 window of the 1080p frame
    q, k = local_qk_ranges(LocalWindow(frames * crop_tpf, crop_tpf, frf, frames * crop_tpf + nat))
    official_q, official_k = ranges[f"ranges.{i}.q"], ranges[f"ranges.{i}.k"]
    assert torch.equal(q[:frames] // crop_tpf, official_q[:frames] // (nv // frames))
    assert torch.equal(k[:frames] // crop_tpf, official_k[:frames] // (nv // frames))


@torch.no_grad()
def test_a_crop_is_seen_where_it_sits_in_the_full_frame():
    """Video RoPE positions are centred on the frame and audio/text sit at h = w = 0: a crop given its own
    coordinates would be seen elsewhere in the frame, so the crop passes its full-frame coordinates."""
    torch.manual_seed(0)
    model = HappyHorseTransformer(ModelConfig.preset("tiny", "sr_1080p")).float().eval()
    model.set_compute_dtype("fp32")
    video, audio, text = torch.randn(1, 48, 3, 4, 6), torch.randn(1, 9, 64), torch.randn(1, 3, 32)
    full = video_coords((3, 10, 16)).reshape(3, 5, 8, 9)
    window = window_coords((3, 10, 16), (2, 4, 4, 6))
    assert torch.equal(window, full[:, 1:3, 2:5].reshape(-1, 9))
    own = model(video, audio, text)[0]
    # mutation: forward ignoring video_positions -> the same output both ways
    placed = model(video, audio, text, video_positions=window[None])[0]
    assert (own - placed).abs().max() > 1e-3
    with pytest.raises(ValueError, match="whole-patch window"):
        window_coords((3, 10, 16), (1, 4, 4, 6))


def test_the_objective_passes_the_crop_its_full_frame_coordinates():
    batch = _batch(bsz=2, hr_hw=(12, 16))
    model = Recorder()
    sr_flow_matching_loss(model, batch, LossSection(), seed=2, caption_dropout=0.0, crop=(64, 96))
    positions = model.calls[0]["positions"]
    full = video_coords((2, 12, 16)).reshape(2, 6, 8, 9)
    for r in range(2):
        # mutation: the crop's own video_coords (or no positions) -> not a window of the full frame's
        hits = [(y, x) for y in range(0, 5) for x in range(0, 6)
                if torch.equal(positions[r], full[:, y : y + 2, x : x + 3].reshape(-1, 9))]  # fmt: skip
        assert len(hits) == 1
    sr_flow_matching_loss(model, batch, LossSection(), seed=2, caption_dropout=0.0)  # whole frames
    assert model.calls[1]["positions"] is None  # the model's own coordinates: the whole grid's
