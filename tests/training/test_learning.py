"""A run that proves it learns: the adapter pulls 8-step distilled samples onto the clip it was trained on.

A sign or sigma convention that differs between the objective and the sampler still
lowers the training loss; only sampling the trained model shows it. The procedure is
``benchmarks/learning.py`` (one implementation for the test and the benchmark).

The voice check does the same for an audio-focused adapter (the voice recipe's selection): its
samples' audio lands near the clip's, and their video no further from the clip than the base's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from learning import CONFIG, VIDEO_TOLERANCE, learning_check, sr_learning_check, voice_check, voice_settings

from hhtune.model import ModelConfig
from hhtune.recipe import load_recipe

ROOT = Path(__file__).parents[2]


@pytest.mark.slow  # 2,000 training steps
@pytest.mark.timeout(1500)
def test_adapted_samples_land_at_most_half_as_far_from_the_clip_as_the_base_samples(tmp_path):
    result = learning_check(tmp_path, steps=2000, clips=1, seeds=4)
    assert result.base > 1.0  # the base knows nothing of the clip: its samples are about noise-far from it
    assert result.adapted <= 0.5 * result.base, result


@pytest.mark.slow  # a few hundred training steps
@pytest.mark.timeout(900)
def test_a_voice_adapter_pulls_the_audio_onto_the_clip_and_keeps_the_picture(tmp_path):
    result = voice_check(tmp_path)
    assert result.base_audio > 0.8  # the base's audio is about noise-far from the clip's
    assert result.adapted_audio <= 0.5 * result.base_audio, result
    assert result.adapted <= (1 + VIDEO_TOLERANCE) * result.base, result  # the picture is no further from the clip


def test_the_voice_check_trains_the_voice_recipes_selection():
    recipe = load_recipe(ROOT / "recipes" / "voice_lora.yaml")
    lora, weights = voice_settings(ModelConfig.preset(recipe.model.preset))
    assert {k: getattr(recipe.lora, k) for k in lora} == lora
    assert {k: getattr(recipe.loss, k) for k in weights} == weights
    lora, _ = voice_settings(CONFIG)
    assert lora == {"layers": [0, 4, 5], "experts": ["audio"], "embedders": ["audio"]}


@pytest.mark.slow  # 200 training steps, ~30 s
@pytest.mark.timeout(600)
def test_an_sr_adapter_pulls_the_sr_stage_at_most_half_as_far_from_the_clip_as_the_base(tmp_path):
    """The SR stage started from the clip's upsampled base-size latents lands near the clip's high-resolution
    latents with the adapter, not without: the SR objective and the SR stage agree."""
    result = sr_learning_check(tmp_path, steps=200, seeds=4)
    assert result.base > 1.0  # the base SR model passes its noisy start through: far from the clip's detail
    assert result.adapted <= 0.5 * result.base, result
