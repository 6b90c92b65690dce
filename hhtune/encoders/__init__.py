"""The frozen encoders around the transformer, loaded from local paths only.

* video: the Wan2.2 VAE through diffusers ``AutoencoderKLWan`` (48 channels, stride 4x16x16);
  latents are the posterior mean normalised per channel, ``(mu - mean) / std``, as the
  official ``Wan2_2_VAE.encode`` does with its 48 constants (diffusers keeps the same
  constants in the config as ``latents_mean`` / ``latents_std``);
* audio: the Stable Audio Open VAE through diffusers ``AutoencoderOobleck``; the official
  pipeline loads audio mono at 51200 Hz and feeds it duplicated to two channels
  (``load_audio_and_encode``), which makes 25 latents per second (downsampling 2048);
  decoded audio is brought to 44100 Hz by the ratio 441/512 (official post-processing);
* text: the T5Gemma encoder's ``last_hidden_state`` (official ``T5GemmaEncoder.encode``),
  padded or trimmed to 640 tokens (``t5_gemma_target_length``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

AUDIO_SAMPLE_RATE = 51200
AUDIO_HOP = 2048
TEXT_LENGTH = 640


class EncoderError(ValueError):
    """An encoder folder that cannot be loaded, naming the path and what was expected."""


class EncoderPaths(BaseModel):
    """Local folders of the three encoders."""

    model_config = ConfigDict(extra="forbid")

    video_vae: Path
    audio_vae: Path
    text_encoder: Path


def _folder(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise EncoderError(f"{what} not found at {p}: expected a diffusers/transformers folder with config.json")
    return p


class VideoVAE:
    """Wan2.2 VAE: frames in [-1, 1] <-> normalised 48-channel latents."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        cfg = model.config
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def normalise(self, mu: Tensor) -> Tensor:
        """``(mu - mean) / std`` per channel."""
        return (mu.float() - self._mean.to(mu.device)) / self._std.to(mu.device)

    def denormalise(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`."""
        return z.float() * self._std.to(z.device) + self._mean.to(z.device)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] (F = 4k+1) -> ``[B, 48, (F-1)//4+1, H/16, W/16]``."""
        if (frames.shape[2] - 1) % 4:
            raise ValueError(f"the frame count must be 4k+1, got {frames.shape[2]}")
        dtype = next(self.model.parameters()).dtype
        mu = self.model.encode(frames.to(self.device, dtype)).latent_dist.mode()
        return self.normalise(mu)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents -> frames ``[B, 3, F, H, W]`` clamped to [-1, 1]."""
        dtype = next(self.model.parameters()).dtype
        return self.model.decode(self.denormalise(latents).to(self.device, dtype)).sample.float().clamp(-1, 1)


class AudioVAE:
    """Stable Audio Open VAE: stereo 51200 Hz waveforms <-> ``[B, La, 64]`` latents at 25/s."""

    sample_rate = AUDIO_SAMPLE_RATE

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, wave: Tensor) -> Tensor:
        """``[B, 2, N]`` at 51200 Hz -> ``[B, N // 2048, 64]`` (posterior mean)."""
        n = wave.shape[-1] // AUDIO_HOP * AUDIO_HOP
        dtype = next(self.model.parameters()).dtype
        z = self.model.encode(wave[..., :n].to(self.device, dtype)).latent_dist.mode()
        return z.float().transpose(1, 2)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``[B, La, 64]`` -> ``[B, 2, La * 2048]`` at 51200 Hz."""
        dtype = next(self.model.parameters()).dtype
        return self.model.decode(latents.transpose(1, 2).to(self.device, dtype)).sample.float()


class TextEncoder:
    """T5Gemma encoder: prompts -> ``[B, 640, C]`` features and their real lengths."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int = TEXT_LENGTH) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.hidden_size = int(model.config.encoder.hidden_size if hasattr(model.config, "encoder") else model.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Encode each prompt alone (as the official pipeline does), pad/trim to ``max_length``."""
        device = next(self.model.parameters()).device
        out = torch.zeros(len(prompts), self.max_length, self.hidden_size)
        lengths = torch.zeros(len(prompts), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer([prompt], return_tensors="pt").to(device)
            hidden = self.model(**ids).last_hidden_state[0].float()[: self.max_length]
            out[i, : hidden.shape[0]] = hidden.cpu()
            lengths[i] = hidden.shape[0]
        return out, lengths


def load_video_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VideoVAE:
    """The Wan2.2 VAE from a diffusers folder (``config.json`` + weights, e.g. ``Wan2.2-TI2V-5B-Diffusers/vae``)."""
    from diffusers import AutoencoderKLWan

    model = AutoencoderKLWan.from_pretrained(_folder(path, "video VAE"), torch_dtype=dtype).to(device).eval()
    if model.config.z_dim != 48:
        raise EncoderError(f"{path}: z_dim {model.config.z_dim}, but HappyHorse takes the 48-channel Wan2.2 VAE")
    return VideoVAE(model)


def load_audio_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AudioVAE:
    """The Stable Audio Open VAE from a diffusers folder (e.g. ``stable-audio-open-1.0/vae``)."""
    from diffusers import AutoencoderOobleck

    model = AutoencoderOobleck.from_pretrained(_folder(path, "audio VAE"), torch_dtype=dtype).to(device).eval()
    hop = 1
    for r in model.config.downsampling_ratios:
        hop *= r
    if hop != AUDIO_HOP or model.config.decoder_input_channels != 64:
        raise EncoderError(f"{path}: hop {hop} / {model.config.decoder_input_channels} channels; expected 2048 / 64")
    return AudioVAE(model)


def load_text_encoder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      max_length: int = TEXT_LENGTH) -> TextEncoder:  # fmt: skip
    """The T5Gemma encoder and its tokenizer from a local transformers folder."""
    from transformers import AutoTokenizer, T5GemmaEncoderModel

    folder = _folder(path, "text encoder")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = T5GemmaEncoderModel.from_pretrained(folder, is_encoder_decoder=False, dtype=dtype).to(device).eval()
    return TextEncoder(model, tokenizer, max_length)


def encoders_fingerprint(paths: EncoderPaths) -> str:
    """Hash of the three configs and a sample of each folder's weight bytes (detects a changed encoder)."""
    h = hashlib.sha256()
    for p in (paths.video_vae, paths.audio_vae, paths.text_encoder):
        p = Path(p)
        h.update((p / "config.json").read_bytes())
        for w in sorted(p.glob("*.safetensors")):
            with open(w, "rb") as f:
                h.update(f.read(1 << 16))
            h.update(str(w.stat().st_size).encode())
    return h.hexdigest()[:16]


def build_tiny_encoders(out_dir: str | Path, seed: int = 0, text_hidden_size: int = 32) -> EncoderPaths:
    """Random-weight tiny configs of the real encoder classes, saved like real ones (tests, quick start).

    The video VAE keeps 48 latent channels and the 4x16x16 stride, the audio VAE 64
    channels and the 2048 hop; only widths and depths shrink. Re-running with the same
    seed is a no-op when the folders exist.
    """
    from ._tiny import save_tiny_audio_vae, save_tiny_text_encoder, save_tiny_video_vae

    out = Path(out_dir)
    paths = EncoderPaths(video_vae=out / "video_vae", audio_vae=out / "audio_vae", text_encoder=out / "text_encoder")
    stamp = out / "tiny_encoders.json"
    want = {"seed": seed, "text_hidden_size": text_hidden_size, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return paths
    save_tiny_video_vae(paths.video_vae, seed)
    save_tiny_audio_vae(paths.audio_vae, seed)
    save_tiny_text_encoder(paths.text_encoder, seed, text_hidden_size)
    stamp.write_text(json.dumps(want))
    return paths


__all__ = ["AUDIO_SAMPLE_RATE", "AudioVAE", "EncoderError", "EncoderPaths", "TextEncoder", "VideoVAE",
           "build_tiny_encoders", "encoders_fingerprint", "load_audio_vae", "load_text_encoder", "load_video_vae"]  # fmt: skip
