"""A run that proves it learns: the adapter pulls 8-step distilled samples onto the clip it was trained on.

A sign or sigma convention that differs between the objective and the sampler still
lowers the training loss; only sampling the trained model shows it. The procedure is
``benchmarks/learning.py`` (one implementation for the test and the benchmark).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from learning import learning_check, sr_learning_check


@pytest.mark.slow  # 2,000 training steps
@pytest.mark.timeout(1500)
def test_adapted_samples_land_at_most_half_as_far_from_the_clip_as_the_base_samples(tmp_path):
    result = learning_check(tmp_path, steps=2000, clips=1, seeds=4)
    assert result.base > 1.0  # the base knows nothing of the clip: its samples are about noise-far from it
    assert result.adapted <= 0.5 * result.base, result


@pytest.mark.slow  # 200 training steps, ~30 s
@pytest.mark.timeout(600)
def test_an_sr_adapter_pulls_the_sr_stage_at_most_half_as_far_from_the_clip_as_the_base(tmp_path):
    """The SR stage started from the clip's upsampled base-size latents lands near the clip's high-resolution
    latents with the adapter, not without: the SR objective and the SR stage agree."""
    result = sr_learning_check(tmp_path, steps=200, seeds=4)
    assert result.base > 1.0  # the base SR model passes its noisy start through: far from the clip's detail
    assert result.adapted <= 0.5 * result.base, result
