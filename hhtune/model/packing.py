"""Turning latents into the model's single token sequence and back.

The layout follows the official data proxy (``inference/pipeline/data_proxy.py``):

* video latents ``[48, T, H, W]`` are cut into 1x2x2 patches; a token's channels are
  ordered ``(C, pT, pH, pW)`` on the way in, and the model's output channels are read
  as ``(pT, pH, pW, C)`` on the way out (the official packer and depacker differ, and
  the weights were trained that way);
* the sequence of one sample is ``[video tokens, audio tokens, text tokens]``;
* each token has 9 coordinates ``(t, h, w, T, H, W, ref_T, ref_H, ref_W)`` that feed
  the Fourier RoPE. Video coordinates are the same in both official ``coords_style`` values;
  audio and text differ (``ModelConfig.coords_style``):

  =====  ==========================================  ==========================================
  style  audio (``La`` tokens)                        text (``Lt`` tokens)
  =====  ==========================================  ==========================================
  v2     time ``0..La-1``, reference ``(La-1)//4+1``  time ``-Lt..-1``, reference 1
  v1     time ``0..La-1``, reference ``T`` (video     time ``0..Lt-1``, reference 2 (so one text
         latent frames)                              token has no finite RoPE scale: refused)
  =====  ==========================================  ==========================================

  Base and distill use v2; the official SR data proxy uses v1.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

PATCH = (1, 2, 2)
CoordsStyle = Literal["v1", "v2"]


class Modality(IntEnum):
    """Modality ids used in the packed sequence (official order)."""

    VIDEO = 0
    AUDIO = 1
    TEXT = 2


def patchify(video: Tensor) -> Tensor:
    """``[B, C, T, H, W]`` video latents -> ``[B, T*(H/2)*(W/2), C*4]`` tokens, channels ``(C, pH, pW)``."""
    b, c, t, h, w = video.shape
    if h % 2 or w % 2:
        raise ValueError(f"video latent height and width must be even for the 1x2x2 patch, got {h}x{w}")
    x = video.reshape(b, c, t, h // 2, 2, w // 2, 2)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * (h // 2) * (w // 2), c * 4)


def unpatchify(tokens: Tensor, latent_shape: tuple[int, int, int]) -> Tensor:
    """Inverse layout of the model's video output: ``[B, N, 4*C]`` with channels ``(pH, pW, C)`` ->
    ``[B, C, T, H, W]``."""
    t, h, w = latent_shape
    b, _, ch = tokens.shape
    c = ch // 4
    x = tokens.reshape(b, t, h // 2, w // 2, 2, 2, c)
    return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, t, h, w)


def grid_coords(shape: tuple[int, int, int], ref_shape: tuple[int, int, int], t_offset: float = 0.0) -> Tensor:
    """Coordinates ``[T*H*W, 9]`` of a (T, H, W) grid with its size and reference size, as the official
    ``get_coords``."""
    t, h, w = shape
    grid = torch.meshgrid(
        torch.arange(t, dtype=torch.float32) + t_offset,
        torch.arange(h, dtype=torch.float32),
        torch.arange(w, dtype=torch.float32),
        indexing="ij",
    )
    xyz = torch.stack(grid, dim=-1).reshape(-1, 3)
    meta = torch.tensor([*shape, *ref_shape], dtype=torch.float32).expand(xyz.shape[0], 6)
    return torch.cat([xyz, meta], dim=1)


def video_coords(latent_shape: tuple[int, int, int]) -> Tensor:
    """Coordinates of the video tokens of a ``(T, H, W)`` latent (spatial RoPE "extra": reference = own size)."""
    t, h, w = latent_shape
    grid = (t // PATCH[0], h // PATCH[1], w // PATCH[2])
    return grid_coords(grid, grid)


def window_coords(latent_shape: tuple[int, int, int], window: tuple[int, int, int, int]) -> Tensor:
    """Coordinates of the video tokens of ``window`` ``(top, left, height, width)`` (latents, even) of a
    ``(T, H, W)`` latent: the ones those tokens have in the whole grid (:func:`video_coords`), frame by frame.

    Video positions are centred on the frame while audio and text sit at ``h = w = 0``, so attention between
    them sees where a token is in the frame: a crop run with its own :func:`video_coords` would move every
    token towards the centre. With these, a crop's tokens are where the full frame has them.
    """
    t, h, w = latent_shape
    top, left, wh, ww = window
    if min(top, left, wh, ww) < 0 or top % 2 or left % 2 or wh % 2 or ww % 2 or top + wh > h or left + ww > w:
        raise ValueError(f"window {window} is not a whole-patch window of a {h}x{w} latent frame")
    grid = video_coords(latent_shape).reshape(t, h // PATCH[1], w // PATCH[2], 9)
    return grid[:, top // 2 : (top + wh) // 2, left // 2 : (left + ww) // 2].reshape(-1, 9)


def audio_coords(num_audio: int, style: CoordsStyle = "v2", num_frames: int | None = None) -> Tensor:
    """Coordinates of ``num_audio`` audio tokens in ``style`` (v1 needs ``num_frames``, the video latent frames)."""
    if style == "v1":
        if num_frames is None:
            raise ValueError("v1 audio coordinates need num_frames (the video latent frames)")
        if num_audio == 1 and num_frames != 1:
            raise ValueError("v1 coordinates cannot place a single audio token against several video frames")
        return grid_coords((num_audio, 1, 1), (num_frames, 1, 1))
    return grid_coords((num_audio, 1, 1), ((num_audio - 1) // 4 + 1, 1, 1))


def text_coords(num_text: int, style: CoordsStyle = "v2") -> Tensor:
    """Coordinates of ``num_text`` text tokens in ``style`` (see the table above)."""
    if style == "v1":
        _check_v1_text(torch.tensor([num_text]))
        return grid_coords((num_text, 1, 1), (2, 1, 1))
    return grid_coords((num_text, 1, 1), (1, 1, 1), t_offset=-float(num_text))


def _check_v1_text(lengths: Tensor) -> None:
    if bool((lengths == 1).any()):
        raise ValueError("v1 coordinates (the SR models) need at least 2 text tokens: the official reference "
                         "length 2 gives one token no finite RoPE scale")  # fmt: skip


def pack_sample(video: Tensor, audio: Tensor, text: Tensor,
                coords_style: CoordsStyle = "v2") -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Pack one sample into the official single-sequence inputs.

    Args:
        video: ``[48, T, H, W]`` latents; audio: ``[La, 64]``; text: ``[Lt, C]`` (already trimmed).
        coords_style: the model's ``ModelConfig.coords_style`` (``"v1"`` for the SR models).
    Returns:
        ``x [L, max_channels]`` (zero padded), ``coords [L, 9]``, ``modality [L]`` (int64).
    """
    v = patchify(video.unsqueeze(0))[0]
    parts = [v, audio, text]
    width = max(p.shape[-1] for p in parts)
    x = torch.cat([F.pad(p.float(), (0, width - p.shape[-1])) for p in parts], dim=0)
    coords = torch.cat([video_coords(tuple(video.shape[1:])),
                        audio_coords(audio.shape[0], coords_style, video.shape[1]),
                        text_coords(text.shape[0], coords_style)])  # fmt: skip
    modality = torch.cat(
        [torch.full((p.shape[0],), int(m), dtype=torch.int64) for p, m in zip(parts, Modality)]
    )
    return x, coords, modality


def unpack_sample(
    out: Tensor, latent_shape: tuple[int, int, int], num_audio: int, video_channels: int = 192, audio_channels: int = 64
) -> tuple[Tensor, Tensor]:
    """Split the official packed output of one sample into video ``[48, T, H, W]`` and audio ``[La, 64]`` velocities."""
    t, h, w = latent_shape
    nv = t * (h // 2) * (w // 2)
    video = unpatchify(out[None, :nv, :video_channels], latent_shape)[0]
    audio = out[nv : nv + num_audio, :audio_channels]
    return video, audio


def padded_audio_coords(lengths: Tensor, full: int, style: CoordsStyle = "v2",
                        num_frames: int | None = None) -> Tensor:  # fmt: skip
    """Audio coords for each row's real length, padded to ``full`` (padding is masked out)."""
    rows = []
    for n in lengths.tolist():
        c = audio_coords(n, style, num_frames) if n else audio_coords(1)  # a row without audio: all masked
        rows.append(torch.cat([c, c[-1:].expand(full - c.shape[0], 9)]) if full >= c.shape[0] else c[:full])
    return torch.stack(rows).to(lengths.device)


def padded_text_coords(lengths: Tensor, full: int, style: CoordsStyle = "v2") -> Tensor:
    """Text coords in ``style`` (v2: time ``-Lt..-1``, reference 1; v1: time ``0..Lt-1``, reference 2) for each
    row's real length ``Lt``, padded to ``full``."""
    t = torch.arange(full, dtype=torch.float32, device=lengths.device)[None].expand(lengths.shape[0], full)
    if style == "v2":
        t = t - lengths[:, None].float()
    else:
        _check_v1_text(lengths)
    ones = torch.ones_like(lengths, dtype=torch.float32)
    ref = ones * (2.0 if style == "v1" else 1.0)
    meta = torch.stack([lengths.float(), ones, ones, ref, ones, ones], dim=-1)[:, None].expand(-1, full, 6)
    zeros = torch.zeros_like(t)
    return torch.cat([torch.stack([t, zeros, zeros], dim=-1), meta], dim=-1)
