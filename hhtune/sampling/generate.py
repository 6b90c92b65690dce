"""From prompt to mp4: latent sizes, the model as a velocity function, decoding and muxing."""

from __future__ import annotations

import gc
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor

from hhtune.media import read_audio, resize_crop

from ..contract import AUDIO_SAMPLE_RATE, BUCKETS, FPS, LatentShape, audio_samples_for, bucket_size, frames_for
from ..encoders import EncoderPaths, VideoDecoder, decode_video, load_audio_vae, load_text_encoder, load_video_vae
from ..io import atomic_path
from .samplers import sample_base, sample_distilled

OUTPUT_AUDIO_RATE = 44100  # the official post-processing resamples decoded audio by 441/512
NEGATIVE_PROMPT = "low quality, worst quality, blurry, distorted, static, noise, hiss, distortion, muffled"


def latent_shapes(seconds: float, aspect: str,
                  base_resolution: int = 256) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, int]]:  # fmt: skip
    """``(video_shape, audio_shape, (width, height))`` of one clip, batch 1 (the contract's frames and bucket size)."""
    if aspect not in BUCKETS:
        raise ValueError(f"unknown aspect {aspect!r}; allowed: {', '.join(BUCKETS)}")
    width, height = bucket_size(aspect, base_resolution)
    shape = LatentShape.from_pixels(width, height, frames_for(seconds))
    return (1, *shape.video), (1, *shape.audio), (width, height)


def model_velocity_fn(model: torch.nn.Module, text: Tensor, text_length: int):
    """Bind a model and one prompt's features into ``velocity_fn(video, audio)``."""
    lengths = torch.tensor([text_length], device=text.device)

    @torch.no_grad()
    def fn(video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        return model(video, audio, text, text_lengths=lengths)

    return fn


@dataclass
class Generated:
    """Latents and decoded media of one sample."""

    video_latents: Tensor
    audio_latents: Tensor
    frames: np.ndarray  # [F, H, W, 3] uint8
    audio: np.ndarray  # [N, 2] float32 at 44100 Hz


def encode_prompts(prompts: list[str], text_encoder_path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> list[tuple[Tensor, int]]:  # fmt: skip
    """Each prompt's text features ``[1, L, C]`` (on the CPU) and length ``L``, from one text-encoder load.

    The encoder (bf16 on CUDA by default) is freed before returning, so callers can hold the
    features for a whole run without the encoder.
    """
    enc = load_text_encoder(text_encoder_path, device, dtype)
    try:
        feats, lengths = enc.encode(list(prompts))
    finally:
        del enc
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return [(feats[i : i + 1, : int(n)].clone(), int(n)) for i, n in enumerate(lengths.tolist())]


def generate(model: torch.nn.Module, prompt: str, encoders: EncoderPaths, *, seconds: float = 2.0, aspect: str = "16:9",
             base_resolution: int = 256, sampler: str = "distilled", seed: int = 0,
             reference_image: np.ndarray | None = None,
             audio_path: str | None = None, video_guidance: float = 5.0, audio_guidance: float = 5.0,
             device: str | torch.device = "cpu", progress=None, text_features: tuple[Tensor, int] | None = None,
             negative_features: tuple[Tensor, int] | None = None, decode: bool = True, vae_tiling: bool = False,
             offload_model: bool = False, generator: torch.Generator | None = None,
             video_decoder: VideoDecoder | None = None) -> Generated | tuple[Tensor, Tensor]:  # fmt: skip
    """Sample one clip and decode it. ``reference_image`` ([H, W, 3] uint8) makes it image-to-video.

    ``text_features`` (``[1, L, C]``, ``L``) from :func:`encode_prompts`, and for the base sampler
    ``negative_features`` of :data:`NEGATIVE_PROMPT`, skip loading the text encoder. Without them
    the encoder is loaded and freed here, beside ``model``: callers holding a large model encode
    first (as ``python -m hhtune.sample`` and validation do). ``decode=False`` returns the
    ``(video, audio)`` latents only. The VAEs load in bf16 on CUDA; ``vae_tiling`` decodes the
    video in tiles, and ``offload_model`` moves ``model`` to the CPU while the VAEs run. ``generator``
    (seeded with ``seed`` when not given) draws all noise; a second stage continues from it.
    ``video_decoder`` (from :func:`hhtune.encoders.load_decoder`, e.g. the Turbo VAE) decodes the
    video instead of the Wan2.2 VAE of ``encoders``.
    """
    vshape, ashape, (width, height) = latent_shapes(seconds, aspect, base_resolution)
    base = sampler == "base"
    if text_features is None or (base and negative_features is None):
        encoded = encode_prompts([prompt, NEGATIVE_PROMPT] if base else [prompt], encoders.text_encoder, device)
        text_features, negative_features = encoded[0], (encoded[1] if base else None)
    text = text_features[0][:, : text_features[1]].to(device)
    video_vae = audio_vae = None
    reference = None
    if reference_image is not None:
        video_vae = load_video_vae(encoders.video_vae, device)
        reference = encode_reference(video_vae, reference_image, width, height)
    fixed_audio = None
    if audio_path is not None:
        audio_vae = load_audio_vae(encoders.audio_vae, device)
        samples = audio_samples_for(ashape[1])
        wave = torch.from_numpy(read_audio(audio_path, AUDIO_SAMPLE_RATE))[:samples]
        wave = torch.nn.functional.pad(wave, (0, samples - wave.shape[0]))
        fixed_audio = audio_vae.encode(wave[None, None].expand(1, 2, -1))
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    fn = model_velocity_fn(model, text, text.shape[1])
    kwargs = dict(generator=gen, reference_first_frame=reference, fixed_audio=fixed_audio, device=device,
                  callback=progress)
    if sampler == "distilled":
        video, audio = sample_distilled(fn, vshape, ashape, **kwargs)
    elif sampler == "base":
        neg, neg_len = negative_features
        uncond = model_velocity_fn(model, neg[:, :neg_len].to(device), neg_len)
        video, audio = sample_base(fn, uncond, vshape, ashape, video_guidance=video_guidance,
                                   audio_guidance=audio_guidance, **kwargs)  # fmt: skip
    else:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: distilled, base")
    if not decode:
        return video, audio
    del video_vae, audio_vae
    with held_on(model, "cpu" if offload_model else None):
        return decode_latents(video, audio, encoders, device=device, vae_tiling=vae_tiling,
                              video_decoder=video_decoder)


def encode_reference(video_vae, image: np.ndarray, width: int, height: int) -> Tensor:
    """The latents ``[1, C, 1, H, W]`` of a reference image (``[H, W, 3]`` uint8) resized and cropped to the size."""
    pixels = resize_crop(image[None], width, height)[0]
    ref = torch.from_numpy(pixels).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
    return video_vae.encode(ref.to(video_vae.device))


def decode_latents(video: Tensor, audio: Tensor, encoders: EncoderPaths, *, device: str | torch.device = "cpu",
                   vae_tiling: bool = False, video_decoder: VideoDecoder | None = None) -> Generated:  # fmt: skip
    """Frames and 44.1 kHz sound of ``(video, audio)`` latents, each decoder loaded and freed in turn.

    ``video_decoder`` (e.g. the Turbo VAE) decodes the video in place of the Wan2.2 VAE of ``encoders``;
    ``vae_tiling`` tiles the Wan2.2 VAE (the Turbo VAE tiles by itself).
    """
    decoder = video_decoder or load_video_vae(encoders.video_vae, device)
    if vae_tiling and video_decoder is None:
        decoder.model.enable_tiling()
    frames = decode_video(decoder, video)
    del decoder
    audio_vae = load_audio_vae(encoders.audio_vae, device)
    wave = audio_vae.decode(audio)[0].cpu().numpy().T  # [N, 2] at 51200
    del audio_vae
    return Generated(video, audio, frames, to_output_rate(wave))


@contextmanager
def held_on(model: torch.nn.Module, device: str | torch.device | None) -> Iterator[None]:
    """Hold ``model`` on ``device`` inside the block and put it back after (``None``: leave it where it is).

    Moving a model to the CPU frees its device memory for what runs in the block (a decoder, another DiT).
    """
    home = next(model.parameters()).device
    if device is None or torch.device(device) == home:
        yield
        return
    model.to(device)
    if home.type == "cuda":
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        model.to(home)


def to_output_rate(wave: np.ndarray) -> np.ndarray:
    """51200 Hz -> 44100 Hz (ratio 441/512), as the official post-processing does."""
    from scipy.signal import resample  # noqa: PLC0415 -- heavy: scipy.signal loads in ~1 s, only the output resampling needs it

    return resample(wave, round(wave.shape[0] * OUTPUT_AUDIO_RATE / AUDIO_SAMPLE_RATE), axis=0).astype(np.float32)


def write_mp4(frames: np.ndarray, audio: np.ndarray, path: str | Path) -> Path:
    """H.264 yuv420p + AAC mp4 with faststart (plays in browsers), written atomically."""
    path = Path(path)
    _f, h, w, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "a.wav"
        sf.write(wav, np.clip(audio, -1, 1), OUTPUT_AUDIO_RATE)
        with atomic_path(path) as out:
            cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                   "-r", str(FPS), "-i", "-", "-i", str(wav), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                   "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                   "-c:a", "aac", "-shortest", "-movflags", "+faststart", "-f", "mp4", str(out)]  # fmt: skip
            subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def write_previews(generated: Generated, stem: str | Path) -> tuple[Path, Path]:
    """A contact sheet (6 frames) and a waveform PNG next to the mp4."""
    import matplotlib  # noqa: PLC0415 -- Agg is set before pyplot loads; only previews need matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- Agg is set before pyplot loads; only previews need matplotlib

    stem = Path(stem)
    pick = generated.frames[np.linspace(0, len(generated.frames) - 1, 6).round().astype(int)]
    sheet = stem.with_name(stem.name + "_contact.png")
    with atomic_path(sheet) as tmp:
        Image.fromarray(np.concatenate(list(pick), axis=1)).save(tmp, format="PNG")
    wave_png = stem.with_name(stem.name + "_waveform.png")
    fig, ax = plt.subplots(figsize=(8, 2), dpi=80)
    t = np.arange(len(generated.audio)) / OUTPUT_AUDIO_RATE
    ax.plot(t, generated.audio[:, 0], linewidth=0.5)
    ax.set_xlabel("seconds")
    fig.tight_layout()
    with atomic_path(wave_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return sheet, wave_png
