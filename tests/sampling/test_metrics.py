"""Validation metrics on clips built with a known answer."""

from __future__ import annotations

import numpy as np

from hhtune.sampling.metrics import av_sync, dialogue_lines, edit_distance, phoneme_error_rate, reference_fidelity


def _talking_clip(offset_frames: int, n: int = 100, rate: int = 44100, seed: int = 0):
    """Speech bursts in the audio, and a mouth that moves ``offset_frames`` later in the picture."""
    rng = np.random.default_rng(seed)
    on = (rng.random(n) > 0.5).astype(np.float32)
    on = np.convolve(on, np.ones(3) / 3, mode="same") > 0.5
    hop = rate // 25
    audio = np.concatenate([rng.standard_normal(hop) * (0.5 if o else 0.01) for o in on]).astype(np.float32)
    frames = np.zeros((n, 48, 48, 3), dtype=np.uint8)
    moved = np.roll(on, offset_frames)
    for i in range(n):
        frames[i, 30:36, 18:30] = (rng.integers(0, 255, (6, 12, 3)) if moved[i] else 128)
    return audio, frames


def test_av_sync_finds_a_known_offset():
    for offset in (0, 3, -2):
        audio, frames = _talking_clip(offset)
        found, confidence = av_sync(audio, 44100, frames)
        assert found == offset and confidence > 0.3


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
