"""Cutting at word boundaries with 4k+1 frames, and bucket choice."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from data_prep.segment import frames_for, plan, segment
from hhtune.contract import bucket_size, nearest_bucket
from hhtune.media import resize_crop
from hhtune.speech.align import Interval


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
            inside = w.start >= start - 1e-6 and w.end <= end + 1e-6
            assert w.end <= start + 1e-6 or w.start >= end - 1e-6 or inside, (w, start, end)
    for (s1, n1), (s2, _) in itertools.pairwise(clips):
        assert s1 + n1 / 25 <= s2 + 1e-6


def test_no_words_no_clips():
    assert segment([], 10.0, 1.0, 4.0) == [] and plan([], 10.0, 1.0, 4.0).dropped == []


def test_a_group_too_long_is_split_at_its_longest_inner_pause():
    # three 1.2 s words; the pause after the second is the longest: 4 s cannot hold all three
    words = [Interval(0.5, 1.7, "a"), Interval(1.8, 3.0, "b"), Interval(3.6, 4.8, "c")]
    p = plan(words, 6.0, 1.0, 4.0)
    assert [c.words for c in p.clips] == [[0, 1], [2]] and not p.dropped
    assert p.clips[0].end <= 3.6 + 1e-6 and p.clips[1].start >= 3.0 - 1e-6


def test_rounding_is_absorbed_by_the_pause_not_by_dropping_words():
    # a 1.50 s group: 4k+1 frames need 1.56 s; only the pauses can give the 0.06 s
    words = [Interval(0.05, 0.75, "a"), Interval(0.8, 1.55, "b")]
    p = plan(words, 1.7, 1.0, 1.7, pad_s=0.0)
    assert [c.words for c in p.clips] == [[0, 1]] and p.clips[0].frames == 41 and not p.dropped
    assert p.clips[0].start <= 0.05 and 1.55 <= p.clips[0].end <= 1.7 + 1e-6


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


def test_short_pauses_never_let_4k1_rounding_cut_the_last_word():
    # pauses of 0.02 s: ending in the middle of one and rounding down to 4k+1 frames would cut into the word
    words, t = [], 0.0
    for i in range(30):
        words.append(Interval(t, t + 0.37, f"w{i}"))
        t += 0.39
    clips = segment(words, t, 1.0, 2.0)
    covered = 0
    for start, n in clips:
        end = start + n / 25
        inside = [w for w in words if w.start >= start - 1e-6 and w.end <= end + 1e-6]
        covered += len(inside)
        assert not [w for w in words if w.start < end - 1e-6 < w.end - 2e-6 or w.start + 2e-6 < start + 1e-6 < w.end]
    assert covered >= 27  # the rounding loses at most a word here and there, not whole clips


def test_long_silence_before_speech_moves_the_clip_to_the_speech():
    clips = segment([Interval(10.0, 10.5, "a"), Interval(10.6, 11.0, "b")], 12.0, 1.0, 4.0)
    assert len(clips) == 1 and 9.0 < clips[0][0] <= 10.0 and clips[0][0] + clips[0][1] / 25 >= 11.0


def test_a_word_longer_than_max_is_dropped_not_cut():
    words = [Interval(0.1, 0.5, "a"), Interval(0.6, 5.6, "long"), Interval(5.8, 6.6, "b")]
    p = plan(words, 7.0, 0.5, 2.0)
    for c in p.clips:
        assert c.end <= 0.6 + 1e-6 or c.start >= 5.6 - 1e-6
    assert [(d.start, d.end) for d in p.dropped] == [(0.6, 5.6)] and "longer than max_seconds" in p.dropped[0].reason
    assert sorted(i for c in p.clips for i in c.words) == [0, 2]
