"""Look and drift: how far the samples' colours (and latents) sit from the footage's, and how far an adapter
moves samples of unrelated prompts away from the base model's at the same seed. Plain numpy: no model needed."""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np

from ..clips import AVClip
from .memo import ArrayMemo
from .result import MetricResult

_BINS = 32
_FRAMES_PER_CLIP = 16
_PIXEL_STRIDE = 2  # every other row and column: the histogram does not need every pixel
_LOG_MELS = ArrayMemo()  # by clip audio: the base model's drift clips are compared with every checkpoint's


def colour_histogram(clips: Sequence[AVClip]) -> np.ndarray:
    """The pooled per-channel colour histogram of ``clips``, ``[3, 32]``, each clip weighted equally, rows sum to 1."""
    hists = []
    for clip in clips:
        idx = np.unique(np.linspace(0, len(clip.frames) - 1, _FRAMES_PER_CLIP).round().astype(int))
        px = clip.frames[idx, ::_PIXEL_STRIDE, ::_PIXEL_STRIDE].reshape(-1, 3).astype(np.int64) * _BINS // 256
        h = np.stack([np.bincount(px[:, c], minlength=_BINS) for c in range(3)]).astype(np.float64)
        hists.append(h / h.sum(axis=1, keepdims=True))
    return np.mean(hists, axis=0)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two ``[3, bins]`` histograms, per channel, averaged, as a share of the
    intensity range: 0 for the same colours, 0.1 when the colours sit a tenth of the range apart."""
    cdf = np.cumsum(a, axis=1) - np.cumsum(b, axis=1)
    return float(np.abs(cdf).sum(axis=1).mean() / a.shape[1])


def latent_stats(latents: Sequence) -> np.ndarray:
    """Per-channel mean and standard deviation over all positions of all ``[C, T, H, W]`` latents, ``[2C]``."""
    flat = np.concatenate([np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1) for x in latents], axis=1)
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1)])


def look_distance(samples: Sequence[AVClip], references: Sequence[AVClip],
                  latents: tuple[Sequence, Sequence] | None = None) -> MetricResult:  # fmt: skip
    """Colour distance of the samples to the training clips (the value; lower is closer to the footage).

    ``latents``, when given, is ``(sample latents, reference latents)``, each a sequence of video latents
    ``[C, T, H, W]`` (numpy or torch); ``details["latent_stat_distance"]`` is then the distance of their
    per-channel mean and spread, relative to the references' (0: the same statistics).
    """
    if not samples or not references:
        raise ValueError("look_distance needs samples and references")
    details: dict = {"colour_distance": histogram_distance(colour_histogram(samples), colour_histogram(references))}
    if latents is not None:
        s, r = (latent_stats([_numpy(x) for x in group]) for group in latents)
        details["latent_stat_distance"] = float(np.linalg.norm(s - r) / max(np.linalg.norm(r), 1e-12))
    return MetricResult("look_distance", details["colour_distance"], details)


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _log_mel(clip: AVClip) -> np.ndarray:
    return _LOG_MELS.get(clip.audio, lambda: _compute_log_mel(clip))


def _compute_log_mel(clip: AVClip) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=np.asarray(clip.audio, dtype=np.float32), sr=clip.sample_rate, n_mels=64)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).clip(-100.0, None)


def pair_distance(a: AVClip, b: AVClip) -> tuple[float, float]:
    """``(picture, sound)`` distance of two clips of one seed: mean absolute pixel difference over the range,
    and mean absolute log-mel difference over 100 dB. Both 0 for identical clips."""
    if a.frames.shape[1:] != b.frames.shape[1:] or a.sample_rate != b.sample_rate:
        raise ValueError(f"clips to compare differ in size or sample rate: {a.frames.shape} vs {b.frames.shape}")
    n = min(len(a.frames), len(b.frames))
    video = float(np.abs(a.frames[:n].astype(np.int16) - b.frames[:n].astype(np.int16)).mean() / 255.0)
    ma, mb = _log_mel(a), _log_mel(b)
    m = min(ma.shape[1], mb.shape[1])
    audio = float(np.abs(ma[:, :m] - mb[:, :m]).mean() / 100.0) if m else 0.0
    return video, audio


def drift(adapter_samples: Sequence[AVClip], base_samples: Sequence[AVClip]) -> MetricResult:
    """How far the adapter moves samples of unrelated prompts: the mean of picture and sound distances over
    same-seed pairs (``adapter_samples[i]`` against ``base_samples[i]``); 0 when nothing changed."""
    if len(adapter_samples) != len(base_samples) or not base_samples:
        raise ValueError(f"drift needs same-seed pairs, got {len(adapter_samples)} and {len(base_samples)} clips")
    pairs = [pair_distance(a, b) for a, b in zip(adapter_samples, base_samples)]
    video, audio = (float(np.mean(x)) for x in zip(*pairs))
    details = {"video_distance": video, "audio_distance": audio, "per_pair": [(v + a) / 2 for v, a in pairs]}
    return MetricResult("drift", (video + audio) / 2, details)
