"""The frozen encoders around the transformer, loaded from local paths only.

* video: the Wan2.2 VAE through diffusers ``AutoencoderKLWan`` (48 channels, stride 4x16x16),
  latents = posterior mean normalised with the official per-channel constants (:mod:`.video`);
* audio: the Stable Audio Open VAE through diffusers ``AutoencoderOobleck``, stereo at 51200 Hz,
  25 latents per second laid out ``[La, 64]``, unscaled (:mod:`.audio`);
* text: the T5Gemma encoder's last hidden state, fp16-rounded, padded/trimmed to 640 tokens (:mod:`.text`).

Nothing heavy is imported until a loader runs.
"""

from ._common import EncoderError, EncoderPaths
from ._tiny import build_tiny_encoders
from .audio import AudioVAE, load_audio_vae
from .fingerprint import encoders_fingerprint
from .text import TextEncoder, load_text_encoder
from .video import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, VideoVAE, load_video_vae

__all__ = ["WAN22_LATENTS_MEAN", "WAN22_LATENTS_STD", "AudioVAE", "EncoderError", "EncoderPaths",
           "TextEncoder", "VideoVAE", "build_tiny_encoders", "encoders_fingerprint", "load_audio_vae",
           "load_text_encoder", "load_video_vae"]  # fmt: skip
