"""Face landmarks: the mouth is found and its opening measured on a real photograph with the mouth warped."""

from __future__ import annotations

import sys

import numpy as np
from talking_face import face, open_mouth

from hhtune import face as landmarks


def test_mouth_opening_grows_as_the_mouth_opens():
    img = face()
    opening = landmarks.mouth_opening(np.stack([open_mouth(img, a) for a in (0.0, 0.5, 1.0)]))
    assert np.all(np.isfinite(opening))
    assert opening[0] < opening[1] - 0.02 and opening[1] < opening[2] - 0.02


def test_a_frame_without_a_face_is_none_and_nan_not_a_guess():
    img = face()
    frames = np.stack([img, np.full_like(img, 128), img])
    boxes = landmarks.mouth_boxes(frames)
    assert boxes[1] is None
    assert np.isnan(landmarks.mouth_opening(frames)).tolist() == [False, True, False]
    left, top, right, bottom = boxes[0]
    assert left < 223 < right and top < 146 < bottom  # the astronaut's mouth
    assert right - left < 100 and bottom - top < 60  # around the lips, not the face


def test_without_dlib_available_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    assert "dlib" in landmarks.available()
