"""The mouth-weighted video loss (recipe ``loss.mouth_weight``, ``loss.mouth_weight_on``).

The dataset's :data:`~hhtune.contract.MOUTH_BOXES` give, per latent frame, the latent cells around the mouth
(data_prep's ``mouth_regions``). :func:`mouth_cell_weights` turns them into a weight per latent cell:
``mouth_weight`` inside the box, 1 elsewhere and on every latent frame without a face. With ``mouth_weight_on:
spoken`` the extra weight is scaled by how much the latent frame is spoken (the speech mask's maximum over the
video frames it covers, as ``loss.speech_weight`` reads it), so a silent mouth weighs 1.

The weight is applied per latent cell (16x16 pixels of the clip), not per transformer token (2x2 cells): the
loss is a mean over latents, and a mouth at 256 px spans 2-4 cells, which snapping to tokens would often double.
:func:`fold_mouth_weights` folds the cell weights into the objective's per-frame error and frame weights, so the
video loss is exactly the mean of the squared error over every latent cell weighted by
``frame weight x cell weight`` (the frame weights, speech and the pinned image-to-video frame, multiply on top).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..contract import latent_frame_span
from ..recipe import LossSection
from .data import Batch


def mouth_weights(batch: Batch, cfg: LossSection) -> Tensor | None:
    """The cell weights ``[B, T, H, W]`` of ``batch`` under ``cfg`` (:func:`mouth_cell_weights`); ``None`` when
    ``cfg.mouth_weight`` is 1 (off). Raises ``ValueError`` when the batch has no mouth boxes (the training checks
    stop such a run before the model loads)."""
    if cfg.mouth_weight == 1.0:
        return None
    if batch.mouth_boxes is None:
        raise ValueError("loss.mouth_weight needs the dataset's mouth boxes (data_prep option mouth_regions: true)")
    return mouth_cell_weights(batch.mouth_boxes, batch.speech_mask, tuple(batch.video.shape[3:]), cfg.mouth_weight,
                              cfg.mouth_weight_on)  # fmt: skip


def latent_frame_speech(speech_mask: Tensor, latent_frames: int) -> Tensor:
    """How spoken each latent frame is, ``[B, T]`` in [0, 1]: the maximum of the per-video-frame ``speech_mask``
    ``[B, F]`` over the frames the latent frame covers (:func:`~hhtune.contract.latent_frame_span`)."""
    out = torch.zeros(speech_mask.shape[0], latent_frames, device=speech_mask.device)
    for j in range(latent_frames):
        lo, hi = latent_frame_span(j)
        if lo < speech_mask.shape[1]:
            out[:, j] = speech_mask[:, lo:hi].amax(dim=1)
    return out


def mouth_cell_weights(boxes: Tensor, speech_mask: Tensor, grid: tuple[int, int], weight: float,
                       on: str) -> Tensor:  # fmt: skip
    """Weights ``[B, T, H, W]`` of the latent cells from the mouth ``boxes`` ``[B, T, 4]`` (``x0, y0, x1, y1``,
    end exclusive; ``-1`` rows for no face) on an ``H x W`` latent ``grid``.

    ``on`` is ``"always"`` or ``"spoken"`` (the extra weight times :func:`latent_frame_speech` of ``speech_mask``).
    """
    h, w = grid
    boxes = boxes.to(speech_mask.device)
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))
    xs = torch.arange(w, device=boxes.device)
    ys = torch.arange(h, device=boxes.device)
    inside = ((ys >= y0) & (ys < y1))[..., :, None] & ((xs >= x0) & (xs < x1))[..., None, :]  # [B, T, H, W]
    extra = (weight - 1.0) * inside.float()
    if on == "spoken":
        extra = extra * latent_frame_speech(speech_mask, boxes.shape[1])[..., None, None]
    return 1.0 + extra


def fold_mouth_weights(square_error: Tensor, frame_weights: Tensor, cells: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(error [B, T], frame weights [B, T])`` of the video loss from the squared error ``[B, C, T, H, W]``.

    Without ``cells`` the error is the plain mean over channels and cells. With them it is the mean weighted by
    ``cells`` and the frame weights are scaled by each frame's mean cell weight, so that
    ``sum(error * frame_weights) / sum(frame_weights)`` is the cell-weighted mean over the whole clip.
    """
    if cells is None:
        return square_error.mean(dim=(1, 3, 4)), frame_weights
    per_cell = square_error.mean(dim=1)  # [B, T, H, W]
    error = (per_cell * cells).sum(dim=(2, 3)) / cells.sum(dim=(2, 3))
    return error, frame_weights * cells.mean(dim=(2, 3))


__all__ = ["fold_mouth_weights", "latent_frame_speech", "mouth_cell_weights", "mouth_weights"]
