"""The Wan2.2 video VAE (Wan2.2-TI2V-5B, 48 channels, stride 4x16x16) through diffusers ``AutoencoderKLWan``.

Latents are the posterior mean normalised per channel with the 48 constants of the official
pipeline (official ``inference/model/vae2_2/vae2_2_module.py``, class ``Wan2_2_VAE``): its
``encode`` computes ``(mu - mean) * (1 / std)`` and its ``decode`` ``z / (1 / std) + mean``
followed by a clamp to [-1, 1]. The constants are used whatever the checkpoint's config says,
because they are what the transformer was trained with.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..contract import VIDEO_LATENT_CHANNELS, VIDEO_STRIDE
from ._common import (
    EncoderError,
    _check_rank,
    _device_of,
    _diffusers_folder,
    _dtype_of,
    _existing,
    _in_batches,
    default_dtype,
)

# Per-channel latent statistics of the Wan2.2 VAE, as listed in the official ``Wan2_2_VAE.__init__``
# (``self.mean`` / ``self.std``); diffusers' Wan2.2 config carries the same numbers as latents_mean/std.
WAN22_LATENTS_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

#: The file name of the VAE in the official ``Wan2.2-TI2V-5B`` folder (official ``video_generate.py``).
OFFICIAL_VAE_FILE = "Wan2.2_VAE.pth"
_EXPECTED = (f"a diffusers AutoencoderKLWan folder (config.json + weights), a diffusers pipeline folder with vae/, "
             f"or the official Wan2.2-TI2V-5B folder / file {OFFICIAL_VAE_FILE}")  # fmt: skip


class VideoVAE:
    """Wan2.2 VAE: frames in [-1, 1] <-> normalised 48-channel latents.

    ``encode``/``decode`` take any batch; they run ``batch_size`` clips at a time on the model's
    device and return float32 tensors on that device.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int = 1) -> None:
        self.model = model
        self.batch_size = batch_size
        self.latents_mean = torch.tensor(WAN22_LATENTS_MEAN, dtype=torch.float32)
        self.latents_std = torch.tensor(WAN22_LATENTS_STD, dtype=torch.float32)

    @property
    def device(self) -> torch.device:
        return _device_of(self.model)

    def normalise(self, mu: Tensor) -> Tensor:
        """Raw posterior mean ``[B, 48, ...]`` -> model latents: ``(mu - mean) * (1 / std)`` per channel, float32."""
        mean, inv_std = self._stats(mu)
        return (mu.float() - mean) * inv_std

    def denormalise(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`: ``z / (1 / std) + mean`` (the official decode's order of operations)."""
        mean, inv_std = self._stats(z)
        return z.float() / inv_std + mean

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] (F = 4k+1, H and W multiples of 16) -> ``[B, 48, (F-1)//4+1, H/16, W/16]``."""
        _check_rank(frames, 5, "video frames", "[B, 3, F, H, W]")
        b, c, f, h, w = frames.shape
        if c != 3 or (f - 1) % VIDEO_STRIDE[0] or h % VIDEO_STRIDE[1] or w % VIDEO_STRIDE[2] or b == 0:
            raise EncoderError(f"video frames must be [B, 3, F, H, W] with F = 4k+1 and H, W multiples of 16, "
                               f"got {tuple(frames.shape)}")  # fmt: skip
        return _in_batches(self._encode, frames, self.batch_size)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents ``[B, 48, T, h, w]`` -> frames ``[B, 3, 4(T-1)+1, 16h, 16w]`` clamped to [-1, 1]."""
        _check_rank(latents, 5, "video latents", "[B, 48, T, H, W]")
        if latents.shape[1] != VIDEO_LATENT_CHANNELS or latents.shape[0] == 0:
            raise EncoderError(f"video latents must be [B, 48, T, H, W], got {tuple(latents.shape)}")
        return _in_batches(self._decode, latents, self.batch_size)

    def _encode(self, frames: Tensor) -> Tensor:
        # diffusers runs the same causal chunking as the official encode (first frame, then 4 at a time)
        mu = self.model.encode(frames.to(self.device, _dtype_of(self.model))).latent_dist.mode()
        return self.normalise(mu)

    def _decode(self, latents: Tensor) -> Tensor:
        raw = self.denormalise(latents.to(self.device)).to(_dtype_of(self.model))
        return self.model.decode(raw).sample.float().clamp_(-1, 1)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (like.dim() - 2)
        mean = self.latents_mean.to(like.device).view(shape)
        inv_std = (1.0 / self.latents_std).to(like.device).view(shape)
        return mean, inv_std


def load_video_vae(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> VideoVAE:  # fmt: skip
    """The Wan2.2 VAE from a local path.

    Accepted: a diffusers ``AutoencoderKLWan`` folder (``config.json`` + weights, e.g.
    ``Wan2.2-TI2V-5B-Diffusers/vae``), a diffusers pipeline folder holding ``vae/``, the official
    ``Wan2.2-TI2V-5B`` folder holding ``Wan2.2_VAE.pth``, or that ``.pth`` file itself.
    """
    dtype = dtype or default_dtype(device)  # None: bf16 on CUDA, fp32 elsewhere
    kind, where = _resolve_video(path)
    model = _load_diffusers_wan(where, dtype) if kind == "diffusers" else _load_official_wan(where, dtype)
    z_dim, patch = model.config.z_dim, model.config.patch_size
    if z_dim != VIDEO_LATENT_CHANNELS or patch != 2 or model.config.scale_factor_spatial != VIDEO_STRIDE[1]:
        raise EncoderError(f"video VAE at {where}: z_dim {z_dim}, patch_size {patch}, spatial stride "
                           f"{model.config.scale_factor_spatial}; HappyHorse takes the Wan2.2 VAE "
                           f"(z_dim 48, patch_size 2, stride 16)")  # fmt: skip
    _warn_on_other_stats(model.config, where)
    return VideoVAE(model.to(device).eval().requires_grad_(False))


def _resolve_video(path: str | Path) -> tuple[str, Path]:
    p = _existing(path, "video VAE", _EXPECTED)
    if p.is_file():
        if p.suffix in (".pth", ".pt"):
            return "official", p
        raise EncoderError(f"video VAE: {p} is a file but not a .pth checkpoint; expected {_EXPECTED}")
    folder = _diffusers_folder(p, "AutoencoderKLWan", "video VAE")
    if folder is not None:
        return "diffusers", folder
    if (p / OFFICIAL_VAE_FILE).is_file():
        return "official", p / OFFICIAL_VAE_FILE
    raise EncoderError(f"video VAE not found at {p}: expected {_EXPECTED}")


def _load_diffusers_wan(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only loading the video VAE needs it

    try:
        return AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise EncoderError(f"video VAE: cannot load the diffusers folder {folder}: {e}") from e


def _load_official_wan(file: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The official ``.pth`` state dict: architecture read off the tensor shapes, keys renamed to diffusers'."""
    from diffusers import AutoencoderKLWan  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only loading the video VAE needs it

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise EncoderError(f"video VAE: cannot read the official checkpoint {file}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "encoder.conv1.weight" not in state:
        raise EncoderError(f"video VAE: {file} is not a Wan VAE state dict (no encoder.conv1.weight)")
    config = wan22_config_from_state_dict(state)
    with torch.device("meta"):
        model = AutoencoderKLWan(**config)
    try:
        model.load_state_dict(convert_official_wan22(state), strict=True, assign=True)
    except RuntimeError as e:
        raise EncoderError(f"video VAE: {file} does not match the Wan2.2 architecture: {e}") from e
    return model if _dtype_of(model) == dtype else model.to(dtype)


def wan22_config_from_state_dict(state: dict[str, Tensor]) -> dict:
    """``AutoencoderKLWan`` arguments of an official Wan2.2 state dict (its widths, depths and temporal strides)."""
    base = state["encoder.conv1.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    dim_mult, temporal = [], []
    num_res_blocks = 0
    for i in levels:
        pattern = re.compile(rf"encoder\.downsamples\.{i}\.downsamples\.(\d+)\.residual")
        blocks = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        num_res_blocks = len(blocks)
        dim_mult.append(state[f"encoder.downsamples.{i}.downsamples.{max(blocks)}.residual.6.weight"].shape[0] // base)
        temporal.append(f"encoder.downsamples.{i}.downsamples.{num_res_blocks}.time_conv.weight" in state)
    dec_base = state["decoder.head.2.weight"].shape[1] // dim_mult[0]
    return dict(base_dim=base, decoder_base_dim=dec_base, z_dim=state["conv2.weight"].shape[0], dim_mult=dim_mult,
                num_res_blocks=num_res_blocks, attn_scales=[], temperal_downsample=temporal[: len(levels) - 1],
                dropout=0.0, is_residual=True, in_channels=state["encoder.conv1.weight"].shape[1],
                out_channels=state["decoder.head.2.weight"].shape[0], patch_size=2, scale_factor_temporal=4,
                scale_factor_spatial=16, latents_mean=list(WAN22_LATENTS_MEAN),
                latents_std=list(WAN22_LATENTS_STD))  # fmt: skip


# Sub-module names inside one official ResidualBlock ``residual`` Sequential -> diffusers WanResidualBlock.
_RESIDUAL = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.", "residual.6.": "conv2.",
             "shortcut.": "conv_shortcut."}  # fmt: skip
_TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv.", "encoder.conv1.": "encoder.conv_in.",
        "decoder.conv1.": "decoder.conv_in.", "encoder.head.0.": "encoder.norm_out.",
        "encoder.head.2.": "encoder.conv_out.", "decoder.head.0.": "decoder.norm_out.",
        "decoder.head.2.": "decoder.conv_out."}  # fmt: skip
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}


def convert_official_wan22(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official Wan2.2 VAE keys -> diffusers ``AutoencoderKLWan`` (``is_residual=True``) keys.

    Written here because diffusers' single-file converter only knows the Wan2.1 layout; the
    mapping is checked in the tests by a round trip through the inverse renaming.
    """
    out = {}
    for key, value in state.items():
        out[_rename_wan_key(key)] = value
    return out


def _rename_wan_key(key: str) -> str:
    for old, new in _TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"(encoder|decoder)\.middle\.(\d)\.(.*)", key)
    if m:
        side, idx, rest = m.groups()
        return f"{side}.mid_block.{_MIDDLE[idx]}.{_residual(rest)}"
    m = re.match(r"(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.*)", key)
    if m:
        where, level, j, rest = m.groups()
        side, blocks, sampler = (("encoder", "down_blocks", "downsampler") if where.startswith("encoder")
                                 else ("decoder", "up_blocks", "upsampler"))  # fmt: skip
        if rest.startswith(("resample.", "time_conv.")):
            return f"{side}.{blocks}.{level}.{sampler}.{rest}"
        return f"{side}.{blocks}.{level}.resnets.{j}.{_residual(rest)}"
    return key


def _residual(rest: str) -> str:
    for old, new in _RESIDUAL.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _warn_on_other_stats(config, where: Path) -> None:
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None or len(mean) != VIDEO_LATENT_CHANNELS:
        return
    official = torch.tensor(WAN22_LATENTS_MEAN + WAN22_LATENTS_STD)
    if not torch.allclose(torch.tensor(list(mean) + list(std), dtype=torch.float32), official, atol=1e-4):
        warnings.warn(f"{where}: latents_mean/std in the config differ from the official Wan2.2 constants; "
                      f"the official constants are used", stacklevel=3)  # fmt: skip
