"""Validation metrics on clips built with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from hhtune.sampling.metrics import (
    MIN_SYNC_FRAMES,
    dialogue_lines,
    edit_distance,
    mouth_sync,
    phoneme_error_rate,
    reference_fidelity,
)


def _talking(offset_frames: int, n: int = 100, rate: int = 16000, seed: int = 0):
    """Speech bursts in the audio, and a mouth opening that follows them ``offset_frames`` later."""
    rng = np.random.default_rng(seed)
    on = np.convolve(rng.random(n) > 0.5, np.ones(3) / 3, mode="same") > 0.5
    hop = rate // 25
    audio = np.concatenate([rng.standard_normal(hop) * (0.5 if o else 0.01) for o in on]).astype(np.float32)
    mouth = 0.05 + 0.2 * np.roll(on, offset_frames) + 0.005 * rng.standard_normal(n)
    return audio, mouth.astype(np.float32)


@pytest.mark.parametrize("offset", [0, 3, -2])
def test_mouth_sync_finds_a_known_offset(offset):
    audio, mouth = _talking(offset)
    sync = mouth_sync(audio, 16000, mouth)
    assert sync.offset_frames == offset and sync.confidence > 0.5 and sync.frames_without_face == 0


@pytest.mark.parametrize("frames", [MIN_SYNC_FRAMES, 9, 13])
def test_clips_shorter_than_the_offset_range_are_measured(frames):
    audio, mouth = _talking(2, n=frames)
    sync = mouth_sync(audio, 16000, mouth)
    assert sync.frames_without_face == 0 and sync.confidence is not None


def test_a_still_mouth_gives_low_confidence():
    audio, mouth = _talking(3)
    still = 0.05 + 0.002 * np.random.default_rng(1).standard_normal(len(mouth))  # landmark jitter only
    assert mouth_sync(audio, 16000, still).confidence < 0.2


def test_frames_without_a_face_are_counted_not_guessed():
    audio, mouth = _talking(3)
    mouth[10:30] = np.nan
    sync = mouth_sync(audio, 16000, mouth)
    assert sync.frames == 100 and sync.frames_without_face == 20 and sync.offset_frames == 3
    few = np.full(100, np.nan, dtype=np.float32)
    few[:MIN_SYNC_FRAMES - 1] = 0.1
    none = mouth_sync(audio, 16000, few)
    assert none.frames_without_face == 100 - MIN_SYNC_FRAMES + 1
    assert none.confidence is None and none.offset_frames is None


def test_reference_fidelity_and_per():
    ref = np.full((16, 16, 3), 100, dtype=np.uint8)
    same = np.stack([ref] * 5)
    noisy = np.clip(same.astype(int) + np.random.default_rng(0).integers(-40, 40, same.shape), 0, 255).astype(np.uint8)
    assert reference_fidelity(same, ref) > 60 and 10 < reference_fidelity(noisy, ref) < 30
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert phoneme_error_rate(["a", "b"], ["a", "b", "c", "d"]) == 0.5


def test_dialogue_lines_are_parsed_from_prompts():
    prompt = ('A scene.\n\nDialogue:\n<Man in green shirt, German>: "Guten Tag."\n<a woman, Mandarin>: "你好"\n\n'
              'Background Sound:\nx')
    assert dialogue_lines(prompt) == [("German", "Guten Tag."), ("Mandarin", "你好")]
