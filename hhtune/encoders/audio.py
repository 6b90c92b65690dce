"""The Stable Audio Open 1.0 VAE through diffusers ``AutoencoderOobleck``.

The official pipeline (``inference/pipeline/video_process.py``, ``load_audio_and_encode``) loads
audio mono at 51200 Hz, feeds it duplicated to two channels and uses the encoder output
unscaled, laid out ``[La, 64]`` (``video_generate.py`` permutes ``[1, 64, La]`` to ``[1, La, 64]``).
Feeding 51200 Hz to a VAE with a 2048 hop gives 25 latents per second, one per video frame.
Decoding gives audio at 51200 Hz; the official post-processing resamples it by 441/512 to 44100 Hz
(that is the sampler's job, not this module's). There is no latent scaling or shift anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..contract import AUDIO_LATENT_CHANNELS, AUDIO_SAMPLE_RATE, SAMPLES_PER_LATENT
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

#: Files of the official (stable-audio-tools) layout that the official ``SAAudioFeatureExtractor`` reads.
OFFICIAL_CONFIG_FILE, OFFICIAL_WEIGHTS_FILE = "model_config.json", "model.safetensors"
_OFFICIAL_PREFIX = "pretransform.model."
_EXPECTED = ("a diffusers AutoencoderOobleck folder (config.json + weights), the stable-audio-open-1.0 folder "
             "(its vae/ subfolder), or a stable-audio-tools folder with model_config.json + model.safetensors")


class AudioVAE:
    """Stable Audio Open VAE: stereo 51200 Hz waveforms ``[B, 2, N]`` <-> latents ``[B, N // 2048, 64]`` (25/s).

    Outputs are float32 on the model's device; inputs are run ``batch_size`` at a time.
    """

    sample_rate: int = AUDIO_SAMPLE_RATE
    hop: int = SAMPLES_PER_LATENT

    def __init__(self, model: torch.nn.Module, final_tanh: bool = False, batch_size: int = 8) -> None:
        self.model = model
        self.final_tanh = final_tanh
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return _device_of(self.model)

    @torch.no_grad()
    def encode(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[B, 2, N]`` at 51200 Hz -> ``[B, N // 2048, 64]``; trailing samples short of a latent are dropped.

        A mono ``[B, 1, N]`` input is duplicated to two channels, as the official pipeline does.
        Without ``generator`` the latents are the posterior mean (deterministic, what datasets cache);
        with one they are a posterior sample ``mean + (softplus(scale) + 1e-4) * noise``, which is
        what the official bottleneck (``VAEBottleneck.encode``) returns at inference.
        """
        _check_rank(wave, 3, "audio", "[B, 2, N]")
        b, c, n = wave.shape
        if c not in (1, 2) or n < self.hop or b == 0:
            raise EncoderError(f"audio must be [B, 2, N] at {self.sample_rate} Hz with N >= {self.hop} "
                               f"(one latent), got {tuple(wave.shape)}")  # fmt: skip
        wave = wave[..., : n // self.hop * self.hop].expand(b, 2, -1)
        return _in_batches(lambda w: self._encode(w, generator), wave, self.batch_size)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``[B, La, 64]`` -> ``[B, 2, La * 2048]`` at 51200 Hz."""
        _check_rank(latents, 3, "audio latents", "[B, La, 64]")
        if latents.shape[2] != AUDIO_LATENT_CHANNELS or latents.shape[0] == 0 or latents.shape[1] == 0:
            raise EncoderError(f"audio latents must be [B, La, 64] with La >= 1, got {tuple(latents.shape)}")
        return _in_batches(self._decode, latents, self.batch_size)

    def _encode(self, wave: Tensor, generator: torch.Generator | None) -> Tensor:
        dist = self.model.encode(wave.to(self.device, _dtype_of(self.model))).latent_dist
        z = dist.mode() if generator is None else dist.mean + dist.std * _randn_like(dist.mean, generator)
        return z.float().transpose(1, 2)

    def _decode(self, latents: Tensor) -> Tensor:
        out = self.model.decode(latents.transpose(1, 2).to(self.device, _dtype_of(self.model))).sample.float()
        return torch.tanh(out) if self.final_tanh else out


def _randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    # drawn on the generator's device, then moved: a CPU generator gives the same noise on any device
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device, x.dtype)


def load_audio_vae(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> AudioVAE:  # fmt: skip
    """The Stable Audio Open VAE from a local path.

    Accepted: a diffusers ``AutoencoderOobleck`` folder (``config.json`` + weights, e.g.
    ``stable-audio-open-1.0/vae``), the ``stable-audio-open-1.0`` folder itself (its ``vae/`` is used),
    or a stable-audio-tools folder with ``model_config.json`` + ``model.safetensors`` (what the
    official ``SAAudioFeatureExtractor`` reads; the ``pretransform.model.*`` weights are converted).
    """
    dtype = dtype or default_dtype(device)  # None: bf16 on CUDA, fp32 elsewhere
    kind, folder = _resolve_audio(path)
    final_tanh = False
    if kind == "diffusers":
        from diffusers import AutoencoderOobleck  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only loading the audio VAE needs it

        try:
            model = AutoencoderOobleck.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise EncoderError(f"audio VAE: cannot load the diffusers folder {folder}: {e}") from e
    else:
        model, final_tanh = _load_official_oobleck(folder, dtype)
    hop = 1
    for r in model.config.downsampling_ratios:
        hop *= r
    channels = model.config.decoder_input_channels
    if hop != SAMPLES_PER_LATENT or channels != AUDIO_LATENT_CHANNELS or model.config.audio_channels != 2:
        raise EncoderError(f"audio VAE at {folder}: hop {hop}, {channels} latent channels, "
                           f"{model.config.audio_channels} audio channels; expected the Stable Audio Open VAE "
                           f"(hop 2048, 64 latent channels, stereo)")  # fmt: skip
    return AudioVAE(model.to(device).eval().requires_grad_(False), final_tanh=final_tanh)


def _resolve_audio(path: str | Path) -> tuple[str, Path]:
    p = _existing(path, "audio VAE", _EXPECTED)
    if p.is_dir():
        official = (p / OFFICIAL_CONFIG_FILE).is_file()  # its folder may hold a config.json that is not diffusers'
        folder = _diffusers_folder(p, "AutoencoderOobleck", "audio VAE", root=not official)
        if folder is not None:
            return "diffusers", folder
        if official:
            if not (p / OFFICIAL_WEIGHTS_FILE).is_file():
                raise EncoderError(f"audio VAE: {p} has {OFFICIAL_CONFIG_FILE} but no {OFFICIAL_WEIGHTS_FILE}")
            return "official", p
    raise EncoderError(f"audio VAE not found at {p}: expected {_EXPECTED}")


def _load_official_oobleck(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, bool]:
    """A stable-audio-tools checkpoint as an ``AutoencoderOobleck`` and whether its decoder ends in tanh."""
    from diffusers import AutoencoderOobleck  # noqa: PLC0415 -- heavy: diffusers loads in ~2 s, only loading the audio VAE needs it

    config = oobleck_config_from_official(json.loads((folder / OFFICIAL_CONFIG_FILE).read_text()), folder)
    final_tanh = config.pop("final_tanh")
    state = {k[len(_OFFICIAL_PREFIX):]: v for k, v in load_file(folder / OFFICIAL_WEIGHTS_FILE).items()
             if k.startswith(_OFFICIAL_PREFIX)}  # fmt: skip
    if not state:
        raise EncoderError(f"audio VAE: {folder / OFFICIAL_WEIGHTS_FILE} holds no {_OFFICIAL_PREFIX}* weights")
    model = AutoencoderOobleck(**config)
    try:
        model.load_state_dict(convert_official_oobleck(state, len(config["downsampling_ratios"])), strict=True)
    except RuntimeError as e:
        raise EncoderError(f"audio VAE: {folder} does not match its model_config.json: {e}") from e
    return (model if dtype == torch.float32 else model.to(dtype)), final_tanh


def oobleck_config_from_official(full: dict, where: Path | str = "model_config.json") -> dict:
    """``AutoencoderOobleck`` arguments (plus ``final_tanh``) from a stable-audio-tools ``model_config.json``.

    The VAE is the ``model.pretransform`` entry, as the official ``SAAudioFeatureExtractor`` reads it.
    """
    try:
        vae = full["model"]["pretransform"]["config"]
        enc, dec = vae["encoder"]["config"], vae["decoder"]["config"]
        config = dict(encoder_hidden_size=enc["channels"], downsampling_ratios=list(enc["strides"]),
                      channel_multiples=list(enc["c_mults"]), decoder_channels=dec["channels"],
                      decoder_input_channels=dec["latent_dim"], audio_channels=vae["io_channels"],
                      sampling_rate=full["sample_rate"])  # fmt: skip
    except (KeyError, TypeError) as e:
        raise EncoderError(f"audio VAE: {where} is not a stable-audio-tools config with "
                           f"model.pretransform (missing {e})") from e  # fmt: skip
    if vae.get("bottleneck", {}).get("type", "vae") != "vae" or not enc.get("use_snake") or not dec.get("use_snake"):
        raise EncoderError(f"audio VAE: {where}: only the Oobleck VAE with snake activations and a 'vae' bottleneck "
                           f"(Stable Audio Open) is supported")  # fmt: skip
    if (list(dec["strides"]) != config["downsampling_ratios"] or list(dec["c_mults"]) != config["channel_multiples"]
            or 2 * dec["latent_dim"] != enc["latent_dim"] or enc["latent_dim"] != enc["channels"]):  # fmt: skip
        raise EncoderError(f"audio VAE: {where}: encoder and decoder shapes that diffusers' "
                           f"AutoencoderOobleck cannot hold")  # fmt: skip
    config["final_tanh"] = bool(dec.get("final_tanh", True)) or bool(dec.get("soft_clip", False))
    return config


def convert_official_oobleck(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """stable-audio-tools Oobleck keys (``encoder.layers.*``) -> diffusers ``AutoencoderOobleck`` keys.

    Written here because diffusers ships this mapping only as a script. ``depth`` is the number
    of strided blocks. Snake parameters are reshaped from ``[C]`` to diffusers' ``[1, C, 1]``.
    """
    out = {}
    for key, value in state.items():
        new = _rename_oobleck_key(key, depth)
        if new.endswith((".alpha", ".beta")) and value.dim() == 1:
            value = value.view(1, -1, 1)
        out[new] = value
    return out


def _rename_oobleck_key(key: str, depth: int) -> str:
    side, _, idx, *rest = key.split(".")
    i = int(idx)
    tail = ".".join(rest)
    if i == 0:
        return f"{side}.conv1.{tail}"
    if i == depth + 1:
        return f"{side}.snake1.{tail}"
    if i == depth + 2:
        return f"{side}.conv2.{tail}"
    # a block: its ``layers.j`` Sequential
    _, j, *inner = rest
    j = int(j)
    inner_tail = ".".join(inner)
    if side == "encoder":
        names = {0: "res_unit1", 1: "res_unit2", 2: "res_unit3", 3: "snake1", 4: "conv1"}
    else:
        names = {0: "snake1", 1: "conv_t1", 2: "res_unit1", 3: "res_unit2", 4: "res_unit3"}
    name = names[j]
    if name.startswith("res_unit"):
        # ResidualUnit.layers: 0 snake, 1 conv k7, 2 snake, 3 conv k1
        _, k, *leaf = inner
        inner_tail = {"0": "snake1", "1": "conv1", "2": "snake2", "3": "conv2"}[k] + "." + ".".join(leaf)
    return f"{side}.block.{i - 1}.{name}.{inner_tail}"
