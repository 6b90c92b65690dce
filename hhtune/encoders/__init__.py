"""The frozen encoders around the transformer, loaded from local paths only.

* video: the Wan2.2 VAE through diffusers ``AutoencoderKLWan`` (48 channels, stride 4x16x16),
  latents = posterior mean normalised with the official per-channel constants (:mod:`.video`);
* audio: the Stable Audio Open VAE through diffusers ``AutoencoderOobleck``, stereo at 51200 Hz,
  25 latents per second laid out ``[La, 64]``, unscaled (:mod:`.audio`);
* text: the T5Gemma encoder's last hidden state, fp16-rounded, padded/trimmed to 640 tokens (:mod:`.text`);
* the Turbo VAE decoder, the official fast alternative to the Wan2.2 decoder (:mod:`.turbo_vae`, loaded
  safely by :mod:`.turbo_load`); :func:`load_decoder` gives either.

Nothing heavy is imported until a loader runs.
"""

from ._common import EncoderError, EncoderPaths
from ._tiny import build_tiny_encoders, build_tiny_turbo_vae
from .audio import AudioVAE, load_audio_vae
from .fingerprint import encoders_fingerprint
from .text import TextEncoder, load_text_encoder
from .turbo_load import TurboVideoDecoder, VideoDecoder, decode_video, load_decoder, load_turbo_vae
from .turbo_vae import TurboVAE, TurboVAEConfig
from .video import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, VideoVAE, load_video_vae

__all__ = ["WAN22_LATENTS_MEAN", "WAN22_LATENTS_STD", "AudioVAE", "EncoderError", "EncoderPaths",
           "TextEncoder", "TurboVAE", "TurboVAEConfig", "TurboVideoDecoder", "VideoDecoder", "VideoVAE",
           "build_tiny_encoders", "build_tiny_turbo_vae", "decode_video", "encoders_fingerprint", "load_audio_vae",
           "load_decoder", "load_text_encoder", "load_turbo_vae", "load_video_vae"]  # fmt: skip
