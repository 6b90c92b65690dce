"""Stage 6b (data config ``mouth_regions``): where the mouth is in each latent frame of a clip, for the
mouth-weighted loss (recipe ``loss.mouth_weight``).

The face is searched on the clip's stored frames, which are already resized and centre-cropped to the bucket:
exactly the pixels the video VAE encodes, so a box in them maps to the latent grid by the VAE's spatial stride
alone (:func:`latent_box`). A latent frame's box is the mouth in the middle one of the video frames it stands for
(:func:`~hhtune.contract.latent_frame_span`: frame 0 for latent frame 0, then frames 3, 7, 11, ...); it is
:data:`~hhtune.contract.NO_MOUTH` when that frame has no face. One frame per latent frame, not the union of its 4:
in 160 ms the lips move less than the box's margin (a quarter of the mouth's width) and far less than a latent cell
(16 px), and the search costs a quarter as much. The landmarks are dlib's 68 points (:mod:`hhtune.face`): about
10 ms a searched frame on one CPU core at 256 px with a face, 15-25 ms without one, so 0.3-0.8 s for a 5 s clip
(32 latent frames); hence on by default.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hhtune import face
from hhtune.contract import NO_MOUTH, VIDEO_STRIDE, latent_frame_span

LatentBox = tuple[int, int, int, int]


class MouthRegions(NamedTuple):
    """A clip's mouth box per latent frame (latent cells, :data:`~hhtune.contract.MOUTH_BOXES`) and how many latent
    frames have none (no face found: they get no mouth weight)."""

    boxes: tuple[LatentBox, ...]
    no_face_frames: int


def latent_box(box: face.Box, width: int, height: int) -> LatentBox:
    """The latent cells a pixel box of a ``width x height`` frame touches: ``[x0, y0, x1, y1)`` on the latent grid
    (``width // 16`` by ``height // 16``), rounded outward so a mouth inside one cell still weighs that cell;
    :data:`~hhtune.contract.NO_MOUTH` when no cell of the grid is left (lips placed outside the picture)."""
    _, sy, sx = VIDEO_STRIDE
    left, top, right, bottom = box
    x0, y0 = max(0, left // sx), max(0, top // sy)
    x1, y1 = min(width // sx, math.ceil(right / sx)), min(height // sy, math.ceil(bottom / sy))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else NO_MOUTH


def searched_frames(num_frames: int) -> list[int]:
    """The video frame searched for each latent frame of a ``num_frames`` (``4k+1``) clip: the middle of its span."""
    spans = [latent_frame_span(j) for j in range((num_frames - 1) // VIDEO_STRIDE[0] + 1)]
    return [lo + (hi - lo) // 2 for lo, hi in spans]


def mouth_regions(frames: np.ndarray) -> MouthRegions:
    """The mouth box of every latent frame of ``frames`` (``[F, H, W, 3]`` uint8, ``F = 4k+1``, the bucket's size).

    Raises ``ImportError`` without dlib (see :func:`hhtune.face.available`).
    """
    height, width = frames.shape[1:3]
    found = face.mouth_boxes(frames[searched_frames(len(frames))])
    boxes = tuple(NO_MOUTH if b is None else latent_box(b, width, height) for b in found)
    return MouthRegions(boxes, sum(b == NO_MOUTH for b in boxes))


__all__ = ["LatentBox", "MouthRegions", "latent_box", "mouth_regions", "searched_frames"]
