"""The costly part of each metric, one clip at a time: DNSMOS, face landmarks, the face and voice embeddings.

Each lives in its metric module's per-clip cache (an :class:`~.memo.ArrayMemo`). :func:`compute` fills them for
one clip, in any process; :func:`remember` puts values computed elsewhere (a background worker, on a copy of the
clip) into this process's caches, where the metrics find them instead of computing them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from ... import face
from ..clips import AVClip
from . import dnsmos, face_identity, landmarks, voice

# cache -> (the cache, which array of the clip it is keyed by, how one clip's value is computed)
_CACHES = {
    "dnsmos": (dnsmos.SCORES, "audio", dnsmos.clip_scores),
    "landmarks": (landmarks.LANDMARKS, "frames", lambda clip: landmarks.clip_landmarks(clip.frames)),
    "voice": (voice.EMBEDDINGS, "audio", voice.clip_embedding),
    "face": (face_identity.DESCRIPTORS, "frames", face_identity.clip_descriptor),
}
# metric -> (why it cannot run here, or None; the caches it reads, in the order they are computed)
_NEEDS = {
    "speech_quality": (dnsmos.available, ("dnsmos",)),
    "lip_sync": (face.available, ("landmarks",)),  # available() loads the landmark models
    "voice_similarity": (voice.available, ("voice",)),
    "face_similarity": (face_identity.available, ("landmarks", "face")),
}
_LOAD = {"speech_quality": dnsmos.load, "voice_similarity": voice.load, "face_similarity": face_identity.load}


def prepare() -> None:
    """Ready a worker process: torch on one thread (the sampler has the other cores), and the model of every metric
    that can run here loaded before the first clip arrives.

    A model that fails to load is left for its metric to load again when it runs, in the main process: it fails
    there as serial scoring does, and the worker goes on with the other metrics.
    """
    torch.set_num_threads(1)
    for name, (why, _) in _NEEDS.items():
        with contextlib.suppress(Exception):
            if why() is None and name in _LOAD:
                _LOAD[name]()


def compute(clip: AVClip, metrics: Sequence[str]) -> dict[str, Any]:
    """The per-clip values the ``metrics`` (names; others are cheap and left out) read for ``clip``, by cache.

    A metric that cannot run here (its optional model is missing) is skipped: it reports itself unavailable.
    """
    out: dict[str, Any] = {}
    for name in metrics:
        why, caches = _NEEDS.get(name, (None, ()))
        if caches and why() is None:
            for cache in caches:
                if cache not in out:
                    out[cache] = _CACHES[cache][2](clip)
    return out


def remember(clip: AVClip, values: dict[str, Any]) -> None:
    """Put ``values`` (from :func:`compute` of the same clip's content) into this process's caches for ``clip``."""
    for cache, value in values.items():
        memo, key, _ = _CACHES[cache]
        memo.put(getattr(clip, key), value)
