"""The "distance to the nearest training clip" metric that every validation logs."""

from __future__ import annotations

import math

import pytest
import torch

from hhtune.sampling.metrics import nearest_clip_distance


def test_a_training_clip_is_at_distance_zero_and_noise_is_far():
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(48, 3, 4, 6, generator=g) for _ in range(3)]
    assert nearest_clip_distance(clips[1], clips) == 0.0
    noise = torch.randn(48, 3, 4, 6, generator=g)
    assert nearest_clip_distance(noise, clips) == pytest.approx(math.sqrt(2), rel=0.15)  # two independent N(0, 1)
    near = clips[2] + 0.1 * noise
    assert nearest_clip_distance(near, clips) == pytest.approx(0.1, rel=0.15)


def test_other_sizes_are_compared_on_the_coarser_grid():
    clip = torch.randn(48, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    upsampled = clip.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # the same content at twice the size
    assert nearest_clip_distance(upsampled, [clip]) == pytest.approx(0.0, abs=1e-6)
    assert nearest_clip_distance(upsampled, []) == math.inf


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\[C, T, H, W\]"):
        nearest_clip_distance(torch.zeros(48, 4, 4), [torch.zeros(48, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"must be \[48, T, H, W\]"):
        nearest_clip_distance(torch.zeros(48, 1, 4, 4), [torch.zeros(16, 1, 4, 4)])
