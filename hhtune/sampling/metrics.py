"""Numbers a team can track on generated clips: speech intelligibility, audio-visual sync, reference fidelity."""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

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


def motion_energy(frames: np.ndarray) -> np.ndarray:
    """Per-frame motion in the lower-centre of the picture (where a speaking mouth is), ``[F]``."""
    _f, h, w, _ = frames.shape
    roi = frames[:, h // 2 : h * 5 // 6, w // 3 : w * 2 // 3].astype(np.float32).mean(axis=3)
    diff = np.abs(np.diff(roi, axis=0)).mean(axis=(1, 2))
    return np.concatenate([[diff[0] if len(diff) else 0.0], diff])


def av_sync(audio: np.ndarray, sample_rate: int, frames: np.ndarray,
            fps: int = 25, max_offset: int = 10) -> tuple[int, float]:
    """Offset in frames (positive: picture lags sound) and confidence between speech energy and mouth motion.

    Normalised cross-correlation of the audio envelope at the frame rate with the motion
    energy; the confidence is the peak correlation minus the median over offsets.
    """
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    hop = sample_rate // fps
    n = min(len(frames), len(mono) // hop)
    if n < 4:
        return 0, 0.0
    env = np.sqrt((mono[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    mot = motion_energy(frames[:n])
    z = lambda x: (x - x.mean()) / (x.std() + 1e-8)
    env, mot = z(env), z(mot)
    scores = {}
    for k in range(-max_offset, max_offset + 1):
        a, b = (env[: n - k], mot[k:]) if k >= 0 else (env[-k:], mot[: n + k])
        if len(a) >= 4 and len(a) == len(b):  # offsets beyond the clip (k >= n) leave nothing to compare
            scores[k] = float(np.mean(a * b))
    best = max(scores, key=scores.get)
    return best, float(scores[best] - np.median(list(scores.values())))


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
