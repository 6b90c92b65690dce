"""Speech quality: DNSMOS (Microsoft's non-intrusive MOS predictor) through ``speechmos``, whose wheel ships the
ONNX models. Garbled, metallic or noisy speech scores low; clean speech about 3-4 on the 1-5 scale."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

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


def load() -> None:
    """Open the ONNX sessions now (a background worker does before its first clip)."""
    _model()


@lru_cache(maxsize=1)
def _model():
    """speechmos's DNSMOS (its features, models and calibration) on ONNX sessions of one intra-op thread.

    ``speechmos.dnsmos.run`` opens its sessions with onnxruntime's defaults: a thread per core that spins while it
    waits, which took 0.47 CPU s a window where one thread takes 0.37, from the cores sampling runs on; and with one
    thread the sums run in one order, so a clip scores the same in a background worker as in this process. With
    onnxruntime-gpu the sessions run on CUDA.
    """
    import onnxruntime as ort  # noqa: PLC0415 -- optional package (see available())
    from speechmos import dnsmos  # noqa: PLC0415 -- optional package (see available())

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    models = Path(dnsmos.__file__).parent / "dnsmos_models"
    scorer = object.__new__(dnsmos.DNSMOS)  # its __init__ opens default sessions: these replace them
    scorer.primary_model_path = str(models / "sig_bak_ovr.onnx")
    scorer.onnx_sess = ort.InferenceSession(scorer.primary_model_path, options, providers=providers)
    scorer.p808_onnx_sess = ort.InferenceSession(str(models / "model_v8.onnx"), options, providers=providers)
    return scorer


def _score(clip: AVClip) -> dict[str, float] | None:
    audio = _mono16k(clip)
    if audio.size == 0 or np.abs(audio).max() < 1e-4:
        return None
    s = _model()(audio, _RATE, False)  # False: DNSMOS proper, not the personalized model
    return {k: float(s[k]) for k in _KEYS}
