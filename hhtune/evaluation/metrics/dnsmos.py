"""Speech quality: DNSMOS (Microsoft's non-intrusive MOS predictor) through ``speechmos``, whose wheel ships the
ONNX models. Garbled, metallic or noisy speech scores low; clean speech about 3-4 on the 1-5 scale."""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np

from ..clips import AVClip
from .memo import ArrayMemo
from .result import MetricResult, unavailable

NAME = "speech_quality"
_RATE = 16000  # what DNSMOS reads
SILENT_SCORE = 1.0  # what a silent sample scores: the bottom of the 1-5 scale
_WINDOW = 144160  # DNSMOS scores 9.01 s windows, one per second of audio; a shorter clip is looped to one window
_KEYS = ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")
SCORES = ArrayMemo()  # by clip audio: filled ahead by a background worker while the next clip samples


def available() -> str | None:
    """``None`` when the metric can run, else why not."""
    try:
        import onnxruntime  # noqa: F401, PLC0415 -- optional package: this only checks that it imports
        import speechmos.dnsmos  # noqa: F401, PLC0415 -- optional package: this only checks that it imports
    except ImportError as e:
        return f"speech quality needs the speechmos and onnxruntime packages ({e})"
    return None


def _mono16k(clip: AVClip) -> np.ndarray:
    audio = np.asarray(clip.audio, dtype=np.float32)
    if clip.sample_rate != _RATE:
        audio = librosa.resample(audio, orig_sr=clip.sample_rate, target_sr=_RATE, res_type="soxr_hq")
    audio = np.clip(audio, -1.0, 1.0)
    # speechmos loops a short clip by doubling it until it covers a window, then scores every 1 s hop of the
    # doubled audio (7 windows of the same sound for a 4 s clip): looping it to exactly one window scores it once
    return np.resize(audio, _WINDOW) if 0 < len(audio) < _WINDOW else audio


def speech_quality(samples: Sequence[AVClip]) -> MetricResult:
    """Mean DNSMOS overall score (1-5) of the samples; ``details`` has the signal, background and P.808 scores.

    A silent sample scores :data:`SILENT_SCORE`, the bottom of the scale (counted in ``silent_samples``): a
    checkpoint that stops speaking is the worst speech, while DNSMOS itself gives silence a middling score.
    """
    why = available()
    if why:
        return unavailable(NAME, why)
    if not samples:
        raise ValueError("speech_quality needs samples")
    each = [clip_scores(clip) for clip in samples]
    scores = [s for s in each if s is not None]
    overall = [SILENT_SCORE if s is None else s["ovrl_mos"] for s in each]
    details: dict = {"per_sample": overall, "silent_samples": len(samples) - len(scores)}
    for k in ("sig_mos", "bak_mos", "p808_mos"):
        details[k] = float(np.mean([s[k] for s in scores])) if scores else None
    return MetricResult(NAME, float(np.mean(overall)), details)


def clip_scores(clip: AVClip) -> dict[str, float] | None:
    """DNSMOS's overall, signal, background and P.808 scores of one clip (``None`` when it is silent), computed
    once per clip audio."""
    return SCORES.get(clip.audio, lambda: _score(clip))


def _score(clip: AVClip) -> dict[str, float] | None:
    from speechmos import dnsmos  # noqa: PLC0415 -- optional package (see available())

    audio = _mono16k(clip)
    if audio.size == 0 or np.abs(audio).max() < 1e-4:
        return None
    s = dnsmos.run(audio, _RATE)
    return {k: float(s[k]) for k in _KEYS}
