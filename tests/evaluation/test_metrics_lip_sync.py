"""Lip-sync at the mouth on a talking photograph whose mouth follows the sound at a known offset."""

from __future__ import annotations

import numpy as np
import pytest
from talking_face import RATE, talking_clip

from hhtune.evaluation.clips import AVClip
from hhtune.evaluation.metrics import lip_sync


@pytest.mark.parametrize("offset", [3, -2])
def test_lip_sync_recovers_a_known_offset(offset):
    frames, audio = talking_clip(offset)
    r = lip_sync(AVClip(frames, audio, RATE))
    assert r.unavailable is None and r.details["frames_without_face"] == 0
    assert abs(r.details["offset_frames"] - offset) <= 1
    assert r.value == r.details["confidence"] > 0.5


def test_a_still_face_gives_low_confidence():
    frames, audio = talking_clip(3, still=True)
    assert lip_sync(AVClip(frames, audio, RATE)).value < 0.2


def test_frames_without_a_face_are_counted_and_left_out():
    frames, audio = talking_clip(3)
    for start in (5, 25, 45):
        frames[start : start + 5] = 128  # the face blanked out three times for five frames
    r = lip_sync(AVClip(frames, audio, RATE))
    assert r.details["frames_without_face"] == 15 and r.details["frames"] == len(frames)
    assert abs(r.details["offset_frames"] - 3) <= 1 and r.value > 0.5


def test_no_face_at_all_is_not_measured():
    frames, audio = talking_clip(0, frames=12)
    r = lip_sync(AVClip(np.full_like(frames, 128), audio, RATE))
    assert r.value is None and r.details["frames_without_face"] == 12 and "face" in r.unavailable


def test_lip_sync_and_face_identity_find_the_faces_of_a_clip_once(monkeypatch):
    from hhtune import face
    from hhtune.evaluation.metrics import face_similarity

    frames, audio = talking_clip(3, frames=12)
    calls, real = [], face.landmarks
    monkeypatch.setattr(face, "landmarks", lambda f: calls.append(len(f)) or real(f))
    clip = AVClip(frames, audio, RATE)
    assert lip_sync(clip).details["frames_without_face"] == 0
    assert face_similarity([clip], [clip]).value > 0.99  # the clip against itself
    assert calls == [12]  # face detection ran once, over every frame, for both metrics
