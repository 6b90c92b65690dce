"""Voice identity: Resemblyzer speaker embeddings of the samples against the training clips' speaker.

Resemblyzer's wheel ships its encoder weights (``pretrained.pt``), so nothing downloads. Each clip becomes
one 256-dimensional embedding; the references' mean is the speaker. The same-speaker threshold is measured
on the references themselves: each training clip against the mean of the others (leave one out), and the
threshold is the 10th percentile of those similarities, so 9 in 10 of the speaker's own clips clear it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..clips import AVClip
from .memo import ArrayMemo
from .result import MetricResult, unavailable

NAME = "voice_similarity"
_THRESHOLD_PERCENTILE = 10
_MIN_SPEECH_S = 0.5  # Resemblyzer's shortest window is 1.6 s; it pads, but under half a second is no voice
EMBEDDINGS = ArrayMemo()  # by clip audio: the references are embedded once per evaluation


def available() -> str | None:
    """``None`` when the metric can run, else why not."""
    try:
        with warnings.catch_warnings():  # its VAD, webrtcvad, warns that pkg_resources is deprecated
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            import resemblyzer  # noqa: F401, PLC0415 -- optional package: this only checks that it imports
    except ImportError as e:
        return f"voice similarity needs the resemblyzer package ({e})"
    return None


def load() -> None:
    """Load the speaker encoder now (a background worker does before its first clip)."""
    _encoder()


@lru_cache(maxsize=1)
def _encoder():
    from resemblyzer import VoiceEncoder  # noqa: PLC0415 -- optional package (see available())

    return VoiceEncoder("cpu", verbose=False)


def clip_embedding(clip: AVClip) -> np.ndarray | None:
    """The clip's speaker embedding (unit length), ``None`` when the clip holds too little speech."""
    return EMBEDDINGS.get(clip.audio, lambda: _embed(clip))


def _embed(clip: AVClip) -> np.ndarray | None:
    from resemblyzer import preprocess_wav, sampling_rate  # noqa: PLC0415 -- optional package (see available())

    if clip.audio.size == 0 or np.abs(clip.audio).max() < 1e-4:  # silence: nothing to normalise or embed
        return None
    wav = preprocess_wav(np.asarray(clip.audio, dtype=np.float32), source_sr=clip.sample_rate)
    if len(wav) < _MIN_SPEECH_S * sampling_rate:
        return None
    return _encoder().embed_utterance(wav)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def voice_similarity(samples: Sequence[AVClip], references: Sequence[AVClip]) -> MetricResult:
    """Mean cosine similarity of each sample's voice to the references' speaker, and the share above threshold.

    ``details``: ``per_sample`` (``None`` for a clip without enough speech, left out of the mean),
    ``threshold`` (measured on the references, needs at least two), ``share_above_threshold`` (of all
    samples: one without speech is not above it), ``samples_without_speech``.
    """
    why = available()
    if why:
        return unavailable(NAME, why)
    refs = [e for e in (clip_embedding(c) for c in references) if e is not None]
    if not refs:
        return unavailable(NAME, "no training clip holds enough speech to know the speaker's voice")
    speaker = np.mean(refs, axis=0)
    per = [None if (e := clip_embedding(c)) is None else _cosine(e, speaker) for c in samples]
    measured = [s for s in per if s is not None]
    details: dict = {"per_sample": per, "samples_without_speech": len(per) - len(measured), "references": len(refs)}
    if len(refs) >= 2:
        own = [_cosine(e, (speaker * len(refs) - e) / (len(refs) - 1)) for e in refs]
        threshold = float(np.percentile(own, _THRESHOLD_PERCENTILE))
        details["threshold"] = threshold
        details["share_above_threshold"] = sum(s >= threshold for s in measured) / max(len(per), 1)
    if not measured:
        return MetricResult(NAME, None, details, unavailable="no sample holds enough speech to compare voices")
    return MetricResult(NAME, float(np.mean(measured)), details)
