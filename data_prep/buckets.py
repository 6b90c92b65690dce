"""Aspect-ratio buckets at the model's base resolution, and resize + centre crop."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BUCKETS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "4:3": (4, 3), "1:1": (1, 1)}


def bucket_size(bucket: str, base: int) -> tuple[int, int]:
    """``(width, height)`` of a bucket: the short side is ``base``, the long side rounded up to 32 (480x256 at 256)."""
    w, h = BUCKETS[bucket]
    if w >= h:
        return int(math.ceil(base * w / h / 32) * 32), base
    return base, int(math.ceil(base * h / w / 32) * 32)


def nearest_bucket(width: int, height: int, allowed: list[str]) -> str:
    """The allowed bucket whose aspect ratio is nearest (in log space) to ``width/height``."""
    ratio = math.log(width / height)
    return min(allowed, key=lambda b: abs(math.log(BUCKETS[b][0] / BUCKETS[b][1]) - ratio))


def resize_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``[F, H, W, 3]`` uint8 frames to cover ``width x height`` (antialiased), then centre-crop."""
    f, h, w, _ = frames.shape
    scale = max(width / w, height / h)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
