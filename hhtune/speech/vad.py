"""Where speech is: Silero VAD (its ``silero-vad`` wheel ships the model, so nothing downloads), with frame
energy against a noise floor as the last resort when Silero is not installed.

Silero is a small neural voice-activity detector; unlike an energy threshold it is not fooled by music or
street noise under the voice. It runs on torch (the JIT model) and needs no torchaudio for 16 kHz input.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from ..contract import SPEECH_SAMPLE_RATE


class VADUnavailable(RuntimeError):  # noqa: N818 -- public name; speech_activity falls back on it
    """Silero VAD cannot be loaded; the message names what to install."""


def energy_activity(audio: np.ndarray, sample_rate: int, hop_s: float = 0.04) -> np.ndarray:
    """Boolean activity per hop from frame energy against an adaptive noise floor (the last resort).

    The threshold sits between the 10th-percentile (noise floor) and the 95th-percentile
    energy, at least 18 dB above the floor; short gaps (< 0.2 s) are bridged.
    """
    hop = max(1, round(hop_s * sample_rate))
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    floor, peak = np.percentile(db, 10), np.percentile(db, 95)
    if peak - floor < 12:  # no loud part at all: silence or stationary noise
        return np.zeros(n, dtype=bool)
    active = db > max(floor + 18, (floor + peak) / 2 - 6)
    return _bridge(active, int(0.2 / hop_s))


def _bridge(active: np.ndarray, gap: int) -> np.ndarray:
    """Fill inactive runs of at most ``gap`` hops between active ones."""
    idx = np.flatnonzero(active)
    for a, b in itertools.pairwise(idx):
        if 1 < b - a <= gap:
            active[a:b] = True
    return active


@functools.cache
def _silero():
    try:
        from silero_vad import load_silero_vad  # noqa: PLC0415 -- its absence is reported as VADUnavailable
    except ImportError as e:
        raise VADUnavailable("Silero VAD is missing: pip install silero-vad") from e
    return load_silero_vad(onnx=False)


def silero_activity(audio_16k: np.ndarray, hop_s: float = 0.04, threshold: float = 0.5) -> np.ndarray:
    """Boolean speech per hop of 16 kHz mono audio, from Silero VAD's speech segments."""
    import torch  # noqa: PLC0415 -- heavy: torch loads in seconds; the energy VAD does not need it
    from silero_vad import get_speech_timestamps  # noqa: PLC0415 -- loaded with the Silero model only

    n = int(len(audio_16k) / SPEECH_SAMPLE_RATE / hop_s)
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    model = _silero()
    with torch.no_grad():
        spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio_16k, dtype=np.float32)), model,
                                      sampling_rate=SPEECH_SAMPLE_RATE, threshold=threshold,
                                      min_silence_duration_ms=150, speech_pad_ms=30)  # fmt: skip
    for s in spans:
        a = int(s["start"] / SPEECH_SAMPLE_RATE / hop_s)
        b = int(np.ceil(s["end"] / SPEECH_SAMPLE_RATE / hop_s))
        out[a : min(n, b)] = True
    return out


def speech_near(active: np.ndarray, hops: int) -> np.ndarray:
    """``active`` widened by ``hops`` on each side (speech onsets and tails the detector trims)."""
    out = active.astype(bool).copy()
    for k in range(1, hops + 1):
        out[k:] |= active[:-k].astype(bool)
        out[:-k] |= active[k:].astype(bool)
    return out


def speech_activity(audio_16k: np.ndarray, hop_s: float = 0.04) -> tuple[np.ndarray, str]:
    """Speech per hop and which detector said so: ``"silero"``, or ``"energy"`` when Silero is unavailable."""
    try:
        return silero_activity(audio_16k, hop_s), "silero"
    except VADUnavailable:
        return energy_activity(audio_16k, SPEECH_SAMPLE_RATE, hop_s), "energy"


__all__ = ["VADUnavailable", "energy_activity", "silero_activity", "speech_activity", "speech_near"]
