"""A talking face with a known answer: scikit-image's astronaut photograph with the mouth warped open and shut
following the loudness of a synthetic speech signal, the picture a known number of frames behind the sound."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d, map_coordinates

RATE = 16000
FPS = 25
# The astronaut's mouth in the 512 x 512 photograph (dlib's lip landmarks): centre column, the line between
# the lips, half its width.
_CX, _LIPS_Y, _HALF_W = 223, 146, 24
_REACH, _MAX_GAP = 30, 16  # rows the warp reaches above and below the lips; gap between the lips, fully open


def face() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


def open_mouth(img: np.ndarray, amount: float) -> np.ndarray:
    """``img`` with the lips pushed apart by ``amount`` (0 shut .. 1 open) and the gap between them dark."""
    top, bottom, left, right = _LIPS_Y - _REACH, _LIPS_Y + _REACH, _CX - _HALF_W, _CX + _HALF_W
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    across = np.sqrt(np.clip(1 - np.abs(xx - _CX) / _HALF_W, 0, 1))
    dy = yy - _LIPS_Y
    shift = amount * _MAX_GAP / 2 * across * np.clip(1 - np.abs(dy) / _REACH, 0, 1)
    src = yy - np.sign(dy) * shift  # each lip pulled away from the line between them
    out = img.copy()
    region = np.stack([map_coordinates(img[..., c].astype(np.float32), [src, xx], order=1) for c in range(3)], -1)
    region[(np.sign(src - _LIPS_Y) != np.sign(dy)) & (shift > 0)] = (60, 25, 30)  # inside of the mouth
    out[top:bottom, left:right] = region.round().clip(0, 255).astype(np.uint8)
    return out


def envelope(frames: int, seed: int = 0) -> np.ndarray:
    """A syllable-like loudness per frame in 0..1 (smoothed noise, about 4 syllables a second)."""
    x = gaussian_filter1d(np.random.default_rng(seed).standard_normal(frames), 1.5)
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def talking_clip(offset: int, frames: int = 60, seed: int = 0, still: bool = False):
    """``(frames [T, 512, 512, 3], audio [N] at 16 kHz)``: the mouth opens ``offset`` frames after the sound
    gets loud (positive: the picture lags). ``still``: the face never moves."""
    env = envelope(frames + 2 * abs(offset), seed)
    sound = env[abs(offset) : abs(offset) + frames]
    mouth = env[abs(offset) - offset : abs(offset) - offset + frames]  # mouth[t] = sound[t - offset]
    img = face()
    video = np.stack([img if still else open_mouth(img, a) for a in mouth])
    hop = RATE // FPS
    carrier = np.random.default_rng(seed + 1).standard_normal(frames * hop).astype(np.float32)
    audio = 0.3 * carrier * np.repeat(sound, hop)
    return video, audio.astype(np.float32)
