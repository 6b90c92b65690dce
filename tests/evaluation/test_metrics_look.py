"""Look, drift and face identity with known answers, and metrics whose optional package is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from talking_face import face, open_mouth

from hhtune.evaluation.clips import AVClip
from hhtune.evaluation.metrics import (
    available_metrics,
    drift,
    face_similarity,
    lip_sync,
    look_distance,
    speech_quality,
    voice_similarity,
)


def _clip(seed: int, shift: int = 0, frames: int = 6) -> AVClip:
    rng = np.random.default_rng(seed)
    video = rng.integers(40, 200, (frames, 24, 32, 3)).astype(np.int16) + shift
    audio = (0.2 * rng.standard_normal(16000)).astype(np.float32)
    return AVClip(video.clip(0, 255).astype(np.uint8), audio, 16000)


def test_look_distance_is_zero_for_the_footage_and_grows_with_a_colour_shift():
    refs = [_clip(0), _clip(1)]
    same = look_distance(refs, refs).value
    near, far = (look_distance([_clip(0, s), _clip(1, s)], refs).value for s in (10, 40))
    assert same == 0.0 and 0.0 < near < far
    assert far == pytest.approx(40 / 256, abs=0.01)  # a shift by 40 of 256 levels, where nothing clips


def test_look_distance_compares_latent_statistics_when_given():
    import torch

    refs = [torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    same = look_distance([_clip(0)], [_clip(0)], latents=(refs, refs))
    moved = look_distance([_clip(0)], [_clip(0)], latents=([r + 1.0 for r in refs], refs))
    assert same.details["latent_stat_distance"] == 0.0
    assert moved.details["latent_stat_distance"] > 0.2  # the channel means moved by one standard deviation


def test_drift_is_zero_against_itself_and_positive_for_changed_clips():
    base = [_clip(0), _clip(1)]
    assert drift(base, base).value == 0.0
    changed = drift([_clip(0), _clip(2)], base)
    assert changed.value > 0.05 and changed.details["per_pair"][0] == 0.0 < changed.details["per_pair"][1]
    quieter = drift([AVClip(c.frames, c.audio * 0.1, c.sample_rate) for c in base], base)
    assert quieter.details["video_distance"] == 0.0 < quieter.details["audio_distance"]
    assert quieter.value > 0.0  # a change in the sound alone is drift too
    with pytest.raises(ValueError, match="pairs"):
        drift(base[:1], base)


def test_face_similarity_finds_the_same_person_and_counts_frames_without_a_face():
    img = face()
    refs = [AVClip(np.stack([img, open_mouth(img, 0.5)]), np.zeros(1600, np.float32), 16000)]
    same = face_similarity([AVClip(open_mouth(img, 1.0)[None], np.zeros(1600, np.float32), 16000)], refs)
    assert same.unavailable is None and same.value > 0.95 and same.details["share_same_person"] == 1.0
    blank = face_similarity([AVClip(np.full_like(img, 128)[None], np.zeros(1600, np.float32), 16000)], refs)
    assert blank.value is None and blank.details["frames_without_face"] == 1


@pytest.mark.parametrize("module, metric", [("resemblyzer", "voice_similarity"), ("speechmos.dnsmos", "speech_quality"),
                                            ("dlib", "lip_sync"), ("dlib", "face_similarity")])  # fmt: skip
def test_a_missing_optional_package_leaves_its_metric_unmeasured_and_the_others_measured(monkeypatch, module, metric):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    assert module.split(".")[0] in available_metrics()[metric]
    clips = [_clip(0), _clip(1)]
    results = {
        "voice_similarity": lambda: voice_similarity(clips[:1], clips),
        "speech_quality": lambda: speech_quality(clips[:1]),
        "lip_sync": lambda: lip_sync(clips[0]),
        "face_similarity": lambda: face_similarity(clips[:1], clips),
    }
    r = results[metric]()
    assert r.value is None and module.split(".")[0] in r.unavailable
    assert look_distance(clips, clips).value == 0.0 and drift(clips, clips).value == 0.0
    others = [n for n, why in available_metrics().items() if why is None]
    assert metric not in others and {"look_distance", "drift"} <= set(others)
