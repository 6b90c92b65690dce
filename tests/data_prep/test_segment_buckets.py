"""Cutting at word boundaries with 4k+1 frames, and bucket choice."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_prep.align import Interval
from data_prep.buckets import bucket_size, nearest_bucket, resize_crop
from data_prep.segment import frames_for, segment


def test_frame_counts_are_4k_plus_1():
    assert [frames_for(s) for s in (0.2, 1.0, 1.9, 5.0)] == [5, 25, 45, 125]


@pytest.mark.parametrize("seed", range(20))
def test_segments_never_cut_a_word(seed):
    rng = random.Random(seed)
    t, words = 0.3, []
    for i in range(rng.randint(3, 40)):
        d = rng.uniform(0.1, 0.9)
        words.append(Interval(t, t + d, f"w{i}"))
        t += d + rng.uniform(0.0, 0.5)
    duration = t + rng.uniform(0, 1)
    clips = segment(words, duration, 1.0, 4.0)
    for start, n in clips:
        end = start + n / 25
        assert (n - 1) % 4 == 0 and 1.0 - 0.04 <= n / 25 <= 4.0 and end <= duration + 1e-6
        for w in words:
            assert w.end <= start + 1e-6 or w.start >= end - 1e-6 or (w.start >= start - 1e-6 and w.end <= end + 1e-6), (w, start, end)
    for (s1, n1), (s2, _) in zip(clips, clips[1:]):
        assert s1 + n1 / 25 <= s2 + 1e-6


def test_footage_without_words_is_cut_in_pieces():
    assert segment([], 10.0, 1.0, 4.0) == [(0.0, 97), (3.88, 97), (7.76, 53)]
    assert segment([], 0.5, 1.0, 4.0) == []


def test_buckets():
    assert bucket_size("16:9", 256) == (480, 256) and bucket_size("9:16", 256) == (256, 480)
    assert bucket_size("4:3", 256) == (352, 256) and bucket_size("1:1", 256) == (256, 256)
    assert nearest_bucket(1920, 1080, ["16:9", "9:16", "4:3", "1:1"]) == "16:9"
    assert nearest_bucket(1080, 1920, ["16:9", "9:16", "4:3", "1:1"]) == "9:16"
    assert nearest_bucket(640, 480, ["16:9", "9:16", "4:3", "1:1"]) == "4:3"
    assert nearest_bucket(1000, 990, ["16:9", "9:16", "4:3", "1:1"]) == "1:1"
    assert nearest_bucket(640, 480, ["16:9", "1:1"]) == "1:1"


def test_resize_crop_keeps_the_centre():
    frames = np.zeros((1, 100, 300, 3), dtype=np.uint8)
    frames[:, :, 100:200] = 255  # a white middle third
    out = resize_crop(frames, 64, 64)
    assert out.shape == (1, 64, 64, 3) and out[0, 32, 32, 0] == 255 and out[0, 32, 0, 0] < 255
