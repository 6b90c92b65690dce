"""The dataset contract, defined once: what ``data_prep`` writes and what training and sampling read.

* video runs at :data:`FPS` frames per second, and a clip has ``4k+1`` frames (the Wan2.2 VAE keeps the first
  frame alone and packs every following 4 into one latent frame);
* audio runs at :data:`AUDIO_SAMPLE_RATE` Hz, stereo, and one audio latent holds :data:`SAMPLES_PER_LATENT`
  samples, so there is exactly one audio latent per video frame (51200 / 2048 = 25);
* pictures are resized and centre-cropped to one of :data:`BUCKETS` at a base (short side) resolution;
* :data:`FORMAT_VERSION` is the version of the dataset layout (manifest + Arrow rows).

The frame rule (:func:`frames_for`): a clip of ``seconds`` has the **largest** ``4k+1`` frame count whose
duration ``frames / FPS`` does not exceed ``seconds`` (at least 1 frame). Never longer than asked: a clip
cut from footage must fit inside it, and a generated clip never runs past the requested length.
0.5 s -> 9 frames (0.36 s; 13 frames would be 0.52 s), 2 s -> 49 frames, 5 s -> 121 frames.
"""

from __future__ import annotations

import math

FPS = 25
AUDIO_SAMPLE_RATE = 51200
SAMPLES_PER_LATENT = 2048
AUDIO_LATENTS_PER_SECOND = AUDIO_SAMPLE_RATE // SAMPLES_PER_LATENT
assert AUDIO_LATENTS_PER_SECOND == FPS, "one audio latent per video frame"
FORMAT_VERSION = 1
BUCKETS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "4:3": (4, 3), "1:1": (1, 1)}
_EPS = 1e-6  # float slack: 0.36 s is 9 frames even when 0.36 * 25 comes out as 8.999999


def frames_for(seconds: float) -> int:
    """The largest ``4k+1`` frame count that lasts at most ``seconds`` at :data:`FPS` (at least 1)."""
    return max(0, math.floor((seconds * FPS + _EPS - 1) / 4)) * 4 + 1


def frames_holding(seconds: float) -> int:
    """The smallest ``4k+1`` frame count that lasts at least ``seconds`` at :data:`FPS`."""
    return max(0, math.ceil((seconds * FPS - _EPS - 1) / 4)) * 4 + 1


def seconds_of(frames: int) -> float:
    """How long ``frames`` video frames (and as many audio latents) last."""
    return frames / FPS


def audio_samples_for(frames: int) -> int:
    """Audio samples at :data:`AUDIO_SAMPLE_RATE` that go with ``frames`` video frames (one latent each)."""
    return frames * SAMPLES_PER_LATENT


def bucket_size(bucket: str, base: int) -> tuple[int, int]:
    """``(width, height)`` of a bucket: the short side is ``base``, the long side rounded up to 32 (480x256 at 256)."""
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}; allowed: {', '.join(BUCKETS)}")
    w, h = BUCKETS[bucket]
    if w >= h:
        return int(math.ceil(base * w / h / 32) * 32), base
    return base, int(math.ceil(base * h / w / 32) * 32)


def nearest_bucket(width: int, height: int, allowed: list[str]) -> str:
    """The allowed bucket whose aspect ratio is nearest (in log space) to ``width/height``."""
    ratio = math.log(width / height)
    return min(allowed, key=lambda b: abs(math.log(BUCKETS[b][0] / BUCKETS[b][1]) - ratio))


__all__ = ["AUDIO_LATENTS_PER_SECOND", "AUDIO_SAMPLE_RATE", "BUCKETS", "FORMAT_VERSION", "FPS", "SAMPLES_PER_LATENT",
           "audio_samples_for", "bucket_size", "frames_for", "frames_holding", "nearest_bucket", "seconds_of"]  # fmt: skip
