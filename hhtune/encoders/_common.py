"""Shared pieces of the encoder wrappers: the paths model, the error type and small helpers.

Latent shapes, rates and the text length are in :mod:`hhtune.contract`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor


class EncoderError(ValueError):
    """An encoder that cannot be loaded or an input it cannot take; the message names the path or the shape."""


class EncoderPaths(BaseModel):
    """Local folders (or files) of the three encoders."""

    model_config = ConfigDict(extra="forbid")

    video_vae: Path
    audio_vae: Path
    text_encoder: Path


def _existing(path: str | Path, what: str, expected: str) -> Path:
    """``path`` as a ``Path``, or an :class:`EncoderError` naming it and the layout that was expected."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EncoderError(f"{what}: {p} does not exist; expected {expected}")
    return p


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype encoders load in when none is given: bf16 on CUDA (the 9B text encoder is 36 GB in fp32), else fp32."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _in_batches(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    """``fn`` over ``x`` ``batch_size`` rows at a time, concatenated (bounds the activation memory of big inputs)."""
    if x.shape[0] <= batch_size:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(batch_size)])


def _check_rank(x: Tensor, rank: int, what: str, layout: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != rank:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise EncoderError(f"{what} must be a {rank}-d tensor {layout}, got {shape}")


def _check_class(config: Path, want: str, what: str) -> None:
    """Raise naming ``config`` when it describes another diffusers class than ``want``."""
    try:
        cls = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise EncoderError(f"{what}: cannot read {config}: {e}") from e
    if cls is not None and cls != want:
        raise EncoderError(f"{what}: {config} describes a {cls}, expected a {want}")


def _diffusers_folder(p: Path, cls: str, what: str, root: bool = True) -> Path | None:
    """``p`` (unless ``root`` is false) or ``p/vae`` when it is a diffusers folder of ``cls`` (checked), else
    ``None``."""
    for folder in ((p, p / "vae") if root else (p / "vae",)):
        if (folder / "config.json").is_file():
            _check_class(folder / "config.json", cls, what)
            return folder
    return None
