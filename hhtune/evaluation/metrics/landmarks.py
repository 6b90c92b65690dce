"""Face landmarks of every frame of a clip, found once and shared: lip-sync reads the mouth in every frame, face
identity the faces in a few of the same frames, and face detection is the costly step of both."""

from __future__ import annotations

import numpy as np

from ... import face
from .memo import ArrayMemo

LANDMARKS = ArrayMemo()  # by clip frames


def clip_landmarks(frames: np.ndarray) -> list[np.ndarray | None]:
    """:func:`hhtune.face.landmarks` of every ``[T, H, W, 3]`` frame, computed on first use for this array."""
    return LANDMARKS.get(frames, lambda: face.landmarks(frames))
