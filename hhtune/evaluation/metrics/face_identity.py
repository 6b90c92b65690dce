"""Face identity: dlib's face-recognition ResNet (shipped in ``face_recognition_models``) on a few frames of
each clip, compared with the faces of the training clips.

dlib's descriptors are 128-dimensional; two photographs of one person lie within 0.6 of each other
(Euclidean), the threshold dlib documents. The value is the mean cosine similarity of each sample's face to
the mean training face; ``details`` has the Euclidean distances and the share within dlib's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ... import face
from ..clips import AVClip
from .landmarks import clip_landmarks
from .memo import ArrayMemo
from .result import MetricResult, unavailable

NAME = "face_similarity"
SAME_PERSON_DISTANCE = 0.6  # dlib's documented threshold for its face-recognition model
_FRAMES_PER_CLIP = 4
DESCRIPTORS = ArrayMemo()  # by clip frames: the references are described once per evaluation


def available() -> str | None:
    """``None`` when the metric can run, else why not."""
    why = face.available()
    if why:
        return why
    try:
        import face_recognition_models  # noqa: PLC0415 -- optional package (see available())

        face_recognition_models.face_recognition_model_location()
    except (ImportError, AttributeError) as e:
        return f"face similarity needs the face-recognition model of face_recognition_models ({e})"
    return None


def load() -> None:
    """Load the face-recognition network now (a background worker does before its first clip)."""
    import face_recognition_models  # noqa: PLC0415 -- optional package (see available())

    _model(face_recognition_models.face_recognition_model_location())


@lru_cache(maxsize=1)
def _model(path: str):
    import dlib  # noqa: PLC0415 -- optional package (see available())

    return dlib.face_recognition_model_v1(path)


def clip_descriptor(clip: AVClip) -> tuple[np.ndarray | None, int]:
    """The mean face descriptor over a few evenly spread frames, and how many of those frames had no face."""
    return DESCRIPTORS.get(clip.frames, lambda: _describe(clip))


def _describe(clip: AVClip) -> tuple[np.ndarray | None, int]:
    import dlib  # noqa: PLC0415 -- optional package (see available())
    import face_recognition_models  # noqa: PLC0415 -- optional package (see available())

    model = _model(face_recognition_models.face_recognition_model_location())
    idx = np.unique(np.linspace(0, len(clip.frames) - 1, _FRAMES_PER_CLIP).round().astype(int))
    found, missing = [], 0
    every = clip_landmarks(clip.frames)  # lip-sync's landmarks of the same clip, when it ran first
    for i in idx:
        points = every[i]
        if points is None:
            missing += 1
            continue
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        shape = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
                                           [dlib.point(int(x), int(y)) for x, y in points])  # fmt: skip
        found.append(np.array(model.compute_face_descriptor(np.ascontiguousarray(clip.frames[i]), shape)))
    return (np.mean(found, axis=0) if found else None), missing


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def face_similarity(samples: Sequence[AVClip], references: Sequence[AVClip]) -> MetricResult:
    """Mean cosine similarity of the samples' faces to the training clips' mean face.

    ``details``: ``per_sample`` (``None`` without a face), ``distances`` (Euclidean), ``share_same_person``
    (within :data:`SAME_PERSON_DISTANCE`), ``frames_without_face`` over the frames looked at.
    """
    why = available()
    if why:
        return unavailable(NAME, why)
    refs = [clip_descriptor(c) for c in references]
    ref_faces = [d for d, _ in refs if d is not None]
    if not ref_faces:
        return unavailable(NAME, "no face was found in the training clips")
    target = np.mean(ref_faces, axis=0)
    got = [clip_descriptor(c) for c in samples]
    per = [None if d is None else _cosine(d, target) for d, _ in got]
    dist = [None if d is None else float(np.linalg.norm(d - target)) for d, _ in got]
    measured = [d for d in dist if d is not None]
    details = {"per_sample": per, "distances": dist, "frames_without_face": sum(m for _, m in got),
               "share_same_person": float(np.mean([d <= SAME_PERSON_DISTANCE for d in measured])) if measured else None}
    if not measured:
        return MetricResult(NAME, None, details, unavailable="no face was found in the samples")
    return MetricResult(NAME, float(np.mean([p for p in per if p is not None])), details)
