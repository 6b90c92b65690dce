"""Numbers a team can track on generated clips: speech intelligibility, lip-sync at the mouth, reference fidelity."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import FPS

_DIALOGUE = re.compile(r'<[^,<>]+,\s*([^<>]+)>:\s*"+([^"]+)"+')


def dialogue_lines(prompt: str) -> list[tuple[str, str]]:
    """``(language name, line)`` for every ``<speaker, Language>: "line"`` in a prompt."""
    return [(lang.strip(), line.strip()) for lang, line in _DIALOGUE.findall(prompt)]


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two phoneme sequences.

    Written here (a dozen lines) rather than adding a dependency for one metric.
    """
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def phoneme_error_rate(recognised: list[str], reference: list[str]) -> float:
    """Edit distance over the reference length (1.0 when nothing was expected but something was said)."""
    if not reference:
        return 0.0 if not recognised else 1.0
    return edit_distance(recognised, reference) / len(reference)


MAX_SYNC_OFFSET = 10  # frames each way (0.4 s at 25 fps)
MIN_SYNC_FRAMES = 8  # overlapping frames with a face an offset needs to be scored
# Mouth opening (inner-lip gap over eye distance) varies this much on a still face: landmark jitter. A mouth
# that moves less is scaled as if it moved this much, so jitter cannot correlate its way to a high confidence.
MOUTH_NOISE = 0.02


@dataclass(frozen=True)
class MouthSync:
    """Lip-sync of one clip: the mouth's opening per frame against the loudness of the speech.

    ``offset_frames`` (positive: the picture lags the sound), ``confidence`` (the correlation peak minus its
    median over offsets, as SyncNet reports it) and ``peak_correlation`` are ``None`` when fewer than
    :data:`MIN_SYNC_FRAMES` frames show a face: those frames are counted, never guessed.
    """

    frames: int
    frames_without_face: int
    offset_frames: int | None = None
    confidence: float | None = None
    peak_correlation: float | None = None


def speech_envelope(audio: np.ndarray, sample_rate: int, frames: int, fps: int = FPS) -> np.ndarray:
    """RMS loudness of mono ``audio`` over each video frame's span, ``[frames]`` (0 past the end of the audio)."""
    hop = sample_rate / fps
    out = np.zeros(frames, dtype=np.float32)
    for i in range(frames):
        chunk = audio[round(i * hop) : round((i + 1) * hop)]
        out[i] = np.sqrt(np.mean(np.square(chunk, dtype=np.float64))) if len(chunk) else 0.0
    return out


def _z(x: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), floor)


def sync_offset(envelope: np.ndarray, mouth: np.ndarray,
                max_offset: int = MAX_SYNC_OFFSET) -> tuple[int, float, float]:  # fmt: skip
    """``(offset, confidence, peak)`` between a speech envelope and mouth opening per frame (``NaN``: no face).

    Positive offset: the picture lags the sound (``mouth[t + offset]`` follows ``envelope[t]``). ``peak`` is
    the highest normalised correlation (a mouth moving less than :data:`MOUTH_NOISE` counts as that much);
    ``confidence`` is the peak minus the median over offsets.
    Returns ``(0, 0.0, 0.0)`` when no offset has enough frames to compare.
    """
    n = min(len(envelope), len(mouth))
    reach = min(max_offset, n - 1)  # an offset as long as the clip leaves nothing to compare
    scores = {}
    for k in range(-reach, reach + 1):
        a, b = (envelope[: n - k], mouth[k:n]) if k >= 0 else (envelope[-k:n], mouth[: n + k])
        keep = np.isfinite(b)
        if keep.sum() >= MIN_SYNC_FRAMES:
            scores[k] = float(np.mean(_z(a[keep]) * _z(b[keep], MOUTH_NOISE)))
    if not scores:
        return 0, 0.0, 0.0
    best = max(scores, key=scores.get)
    return best, float(scores[best] - np.median(list(scores.values()))), scores[best]


def mouth_sync(audio: np.ndarray, sample_rate: int, mouth: np.ndarray) -> MouthSync:
    """Lip-sync of mono ``audio`` against ``mouth``, the mouth opening per video frame (``NaN`` where no face was
    found; :func:`hhtune.face.mouth_opening`)."""
    mouth = np.asarray(mouth, dtype=np.float32)
    missing = int(np.isnan(mouth).sum())
    if len(mouth) - missing < MIN_SYNC_FRAMES:
        return MouthSync(len(mouth), missing)
    env = speech_envelope(np.asarray(audio, dtype=np.float32), sample_rate, len(mouth))
    offset, confidence, peak = sync_offset(env, mouth)
    return MouthSync(len(mouth), missing, offset, confidence, peak)


def reference_fidelity(frames: np.ndarray, reference: np.ndarray, first: int = 5) -> float:
    """PSNR (dB) of the first generated frames against the reference image (same size)."""
    ref = reference.astype(np.float32)
    mse = np.mean([(f.astype(np.float32) - ref) ** 2 for f in frames[:first]])
    return float(10 * np.log10(255.0**2 / max(mse, 1e-8)))


#: The grid training clips are kept at for :func:`nearest_clip_distance` during a run (48 KB a clip).
CLIP_SUMMARY_GRID = (4, 8, 8)


def clip_summary(latent, grid: tuple[int, int, int] = CLIP_SUMMARY_GRID):
    """A video latent ``[48, T, H, W]`` average-pooled to at most ``grid`` (time, height, width), in fp32.

    A run keeps every training clip at this size for the memorisation metric, instead of
    every clip's full latents (12 MB for 5 s at 540p).
    """
    latent = torch.as_tensor(latent, dtype=torch.float32)
    size = tuple(min(g, n) for g, n in zip(grid, latent.shape[1:]))
    return F.adaptive_avg_pool3d(latent[None], size)[0]


def nearest_clip_distance(sample, clips) -> float:
    """Relative L2 distance from a generated video latent ``[48, T, H, W]`` to the nearest training clip's.

    Each pair is compared on the coarser of the two grids (adaptive average pooling over
    time, height and width), so a validation clip rendered at another size or length is
    still comparable; the distance is ``|pooled sample - pooled clip| / |pooled clip|``.
    Near 0 means the sample reproduces a training clip: on a real run that is a
    memorisation warning, on a one-clip overfit it is the proof that training and
    sampling agree. ``inf`` when there are no clips.
    """
    sample = torch.as_tensor(sample, dtype=torch.float32)
    if sample.dim() != 4:
        raise ValueError(f"sample must be a video latent [C, T, H, W], got shape {tuple(sample.shape)}")
    best = float("inf")
    for clip in clips:
        clip = torch.as_tensor(clip, dtype=torch.float32)
        if clip.dim() != 4 or clip.shape[0] != sample.shape[0]:
            raise ValueError(f"clip latents must be [{sample.shape[0]}, T, H, W], got {tuple(clip.shape)}")
        grid = tuple(min(a, b) for a, b in zip(sample.shape[1:], clip.shape[1:]))
        s, c = (F.adaptive_avg_pool3d(t[None], grid)[0] for t in (sample, clip))
        best = min(best, float((s - c).norm() / c.norm().clamp_min(1e-12)))
    return best
