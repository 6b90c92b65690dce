"""The Turbo VAE decoder from the official files, read safely, and the one entry to either video decoder.

The official release ships ``turbo_vae/`` with a JSON config (``TurboV3-Wan22-TinyShallow_7_7.json``)
and the student checkpoint (``checkpoint-340000.ckpt``), a training pickle whose
``ema_state_dict`` holds the decoder (official ``turbo_vaed_model.py``, ``get_turbo_vaed``, which
unpickles it with a plain ``torch.load``). hhtune reads such a pickle only with
``torch.load(..., weights_only=True)``; one holding more than tensors and plain containers is
refused with the command that converts it once to safetensors (``python -m hhtune.convert``,
where the user opts into the unsafe read). A ``.safetensors`` beside the pickle is preferred.

The weights then load strictly into :class:`~hhtune.encoders.turbo_vae.TurboVAE`: every decoder
tensor must be there with its shape, so a config that does not match the weights is an error.
Tensors outside ``decoder.`` are dropped, as the official loader drops them.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from ..contract import VIDEO_LATENT_CHANNELS
from ._common import EncoderError, _check_rank, _existing, default_dtype
from .turbo_vae import TILE_LATENTS, TILE_OVERLAP, TurboVAE, TurboVAEConfig
from .video import load_video_vae

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
_EXPECTED = ("the official turbo_vae/ folder (one .json config and the student checkpoint .ckpt, or the "
             ".safetensors written by python -m hhtune.convert), or the checkpoint file with its .json "
             "beside it")  # fmt: skip
# Keys of the official JSON that TurboVAED takes but decoding does not use, and the distillation heads'
# settings that only training read (the official from_config ignores those).
_UNUSED_KEYS = {"in_channels", "patch_size_t", "scaling_factor", "aligned_feature_projection_mode",
                "aligned_feature_projection_dim", "aligned_blks_indices"}  # fmt: skip


class VideoDecoder(Protocol):
    """What sampling needs of a video decoder: normalised latents ``[B, 48, T, h, w]`` -> frames in [-1, 1]."""

    def decode(self, latents: Tensor) -> Tensor: ...


class TurboVideoDecoder:
    """The Turbo VAE as a :class:`VideoDecoder`: float32 frames ``[B, 3, 4(T-1)+1, 16h, 16w]`` on the CPU.

    Frames larger than ``tile`` latents a side are decoded in overlapping tiles (see
    :meth:`TurboVAE.decode`); ``tile=None`` always decodes whole frames, exactly as upstream.
    """

    def __init__(self, model: TurboVAE, tile: int | None = TILE_LATENTS, overlap: int = TILE_OVERLAP) -> None:
        self.model, self.tile, self.overlap = model, tile, overlap

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        _check_rank(latents, 5, "video latents", "[B, 48, T, H, W]")
        if latents.shape[1] != VIDEO_LATENT_CHANNELS or latents.shape[0] == 0:
            raise EncoderError(f"video latents must be [B, 48, T, H, W], got {tuple(latents.shape)}")
        frames = self.model.decode(latents.to(self.device), tile=self.tile, overlap=self.overlap, output_device="cpu")
        return frames.float().clamp_(-1, 1)


def load_decoder(kind: Literal["wan", "turbo"], path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> VideoDecoder:  # fmt: skip
    """The video decoder ``kind`` from ``path``: ``wan`` the full Wan2.2 VAE (:func:`load_video_vae`), ``turbo``
    the Turbo VAE (:func:`load_turbo_vae`). Both decode the same latents to frames in [-1, 1]."""
    if kind == "wan":
        return load_video_vae(path, device, dtype)
    if kind == "turbo":
        return load_turbo_vae(path, device, dtype)
    raise EncoderError(f"unknown video decoder {kind!r}; allowed: wan, turbo")


def decode_video(decoder: VideoDecoder, latents: Tensor) -> np.ndarray:
    """The first clip of ``latents`` ``[B, 48, T, h, w]`` as uint8 frames ``[F, H, W, 3]``."""
    frames = decoder.decode(latents[:1])[0].permute(1, 2, 3, 0).cpu().numpy()
    return ((frames + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def load_turbo_vae(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> TurboVideoDecoder:  # fmt: skip
    """The Turbo VAE decoder from a local folder or checkpoint file (see the module notes); bf16 on CUDA."""
    config_file, weights_file = _resolve_turbo(path)
    config = read_turbo_config(config_file)
    state = read_turbo_weights(weights_file)
    with torch.device("meta"):
        model = TurboVAE(config)
    _check_keys(model, state, config_file, weights_file)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device, dtype or default_dtype(device)).eval().requires_grad_(False)
    return TurboVideoDecoder(model)


def read_turbo_config(file: Path) -> TurboVAEConfig:
    """The decoder config of the official JSON (keys as ``TurboVAED``'s arguments; ``_``-keys and unused ones
    dropped, unknown ones dropped with a warning, as the official ``from_config`` does)."""
    try:
        raw = json.loads(Path(file).read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"Turbo VAE: cannot read the config {file}: {e}") from e
    if not isinstance(raw, dict):
        raise EncoderError(f"Turbo VAE: {file} is not a JSON object of TurboVAED arguments")
    known = set(TurboVAEConfig.model_fields)
    unknown = sorted(k for k in raw if k not in known and k not in _UNUSED_KEYS and not k.startswith("_"))
    if unknown:
        warnings.warn(f"Turbo VAE config {file}: ignoring keys the decoder does not take: {', '.join(unknown)}",
                      stacklevel=2)  # fmt: skip
    try:
        return TurboVAEConfig(**{k: v for k, v in raw.items() if k in known})
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
        raise EncoderError(f"Turbo VAE config {file}: {details}") from None


def read_turbo_weights(file: Path) -> dict[str, Tensor]:
    """The decoder tensors of a ``.safetensors`` file or of a pickle read with ``weights_only=True``.

    A pickle that holds more than tensors is refused, naming ``python -m hhtune.convert``.
    """
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415 -- only the safetensors path needs it

        try:
            tensors = load_file(file)
        except Exception as e:  # safetensors raises its own SafetensorError for a bad header
            raise EncoderError(f"Turbo VAE: cannot read {file}: {e}") from e
        return turbo_state_dict(tensors, file)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise EncoderError(
            f"Turbo VAE: {file} is a pickle holding more than tensors ({reason}); hhtune does not unpickle it, "
            f"because unpickling can run any code. If you trust its source, convert it once: "
            f"python -m hhtune.convert turbo-vae {file} (writes {file.with_suffix('.safetensors')}, "
            f"which hhtune then loads)"
        ) from None
    except Exception as e:  # torch raises many types for a broken file
        raise EncoderError(f"Turbo VAE: cannot read the checkpoint {file}: {e}") from e
    return turbo_state_dict(checkpoint, file)


def turbo_state_dict(checkpoint: object, file: Path) -> dict[str, Tensor]:
    """The decoder state dict (keys under ``decoder.``) of a loaded checkpoint, read as the official loader does:
    its ``ema_state_dict`` (or the dict itself when it holds tensors only), ``module.`` stripped, ``decoder.``
    added when no key has it; tensors outside the decoder dropped."""
    state = checkpoint.get("ema_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise EncoderError(f"Turbo VAE: {file} holds no decoder state dict (an ema_state_dict of tensors, "
                           f"as the official student checkpoint has)")  # fmt: skip
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith(("decoder.", "encoder.")) for k in state):
        state = {f"decoder.{k}": v for k, v in state.items()}
    return {k: v for k, v in state.items() if k.startswith("decoder.")}


def _check_keys(model: TurboVAE, state: dict[str, Tensor], config: Path, weights: Path) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = sorted(k for k in set(want) & set(state) if tuple(state[k].shape) != want[k])
    if missing or extra or shapes:
        found = (("missing", missing), ("unexpected", extra), ("other shapes", shapes))
        parts = [f"{what} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for what, keys in found if keys]  # fmt: skip
        raise EncoderError(f"Turbo VAE: the weights {weights} do not match the config {config}: "
                           f"{'; '.join(parts)}")  # fmt: skip


def _resolve_turbo(path: str | Path) -> tuple[Path, Path]:
    """``(config, weights)`` of a folder or a weights file; a converted ``.safetensors`` wins over the pickle."""
    p = _existing(path, "Turbo VAE", _EXPECTED)
    folder = p if p.is_dir() else p.parent
    configs = sorted(folder.glob("*.json"))
    if len(configs) != 1:
        found = ", ".join(c.name for c in configs) or "none"
        raise EncoderError(f"Turbo VAE: expected one .json config in {folder}, found {found}; expected {_EXPECTED}")
    if p.is_file():
        if p.suffix not in (*PICKLE_SUFFIXES, ".safetensors"):
            raise EncoderError(f"Turbo VAE: {p} is not a checkpoint (.safetensors, .ckpt, .pt, .pth)")
        converted = p.with_suffix(".safetensors")
        return configs[0], converted if converted.is_file() else p
    weights = sorted(folder.glob("*.safetensors")) or sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if len(weights) != 1:
        found = ", ".join(w.name for w in weights) or "none"
        raise EncoderError(f"Turbo VAE: expected one checkpoint in {folder}, found {found}; expected {_EXPECTED}")
    return configs[0], weights[0]
