"""Faces in frames: where the face and mouth are, and how far the mouth is open, from dlib's 68-point landmarks.

The models ship inside pip wheels, so nothing downloads at run time: dlib's HOG face detector is built into
``dlib-bin`` and the 68-point shape predictor comes with ``face_recognition_models``. A frame where no face
is found gives ``None`` (boxes, landmarks) or ``NaN`` (mouth opening): the caller counts it, nothing is guessed.

Detection is the costly step (about 0.1 s for a 512 px frame), so consecutive frames are searched first in a
window around the previous face, enlarged to the size the detector needs, and only then over the whole frame.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from PIL import Image

#: A box in pixels: (left, top, right, bottom), right and bottom exclusive.
Box = tuple[int, int, int, int]

_MOUTH = slice(48, 68)  # outer and inner lip points of the 68-point layout
_INNER_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper and lower inner lip, left to right
_EYE_CORNERS = (36, 45)  # outer corners: the face's scale, which mouth movement leaves alone
_FACE_PX = 110  # face width the window search scales to (the HOG detector finds faces from about 80 px)
_TRACK_MARGIN = 0.25  # the window: the previous face widened by this share of its size on each side
_FULL_PX = 640  # longest side a whole frame is scaled to when no window is known (faces from 1/8 of it)


def available() -> str | None:
    """``None`` when face landmarks can be computed here, else one sentence saying why not."""
    try:
        _models()
    except (ImportError, RuntimeError) as e:  # RuntimeError: dlib could not read the model file
        return f"face landmarks need dlib-bin and face_recognition_models ({e})"
    return None


def _models():
    import dlib  # noqa: PLC0415 -- optional package (see available())

    with warnings.catch_warnings():  # it finds its files with pkg_resources, which warns that it is deprecated
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import face_recognition_models  # noqa: PLC0415 -- optional package (see available())

    return _load(dlib, face_recognition_models.pose_predictor_model_location())


@lru_cache(maxsize=1)
def _load(dlib, predictor_path: str):
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path)


def _detect(frame: np.ndarray, window: Box | None, detector) -> Box | None:
    """The surest face in ``frame`` (searched inside ``window`` first when given), in frame pixels."""
    h, w = frame.shape[:2]
    if window is not None:
        left, top, right, bottom = window
        size = max(right - left, bottom - top)
        pad = round(size * _TRACK_MARGIN)
        region = (max(0, left - pad), max(0, top - pad), min(w, right + pad), min(h, bottom + pad))
        scale = _FACE_PX / max(size, 1)
    else:
        region, scale = (0, 0, w, h), _FULL_PX / max(h, w)
    x0, y0, x1, y1 = region
    crop = Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1])).convert("L")
    crop = np.asarray(crop.resize((max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))))
    faces, scores, _ = detector.run(crop, 0, 0.0)
    if not faces:
        return None if window is None else _detect(frame, None, detector)
    f = faces[int(np.argmax(scores))]
    return (x0 + round(f.left() / scale), y0 + round(f.top() / scale),
            x0 + round(f.right() / scale), y0 + round(f.bottom() / scale))  # fmt: skip


def landmarks(frames: np.ndarray) -> list[np.ndarray | None]:
    """The 68 landmarks ``[68, 2]`` (x, y pixels, float32) of the surest face (highest detector score) in each
    ``[T, H, W, 3]`` frame.

    ``None`` for a frame without a detected face. Raises ``ImportError`` without dlib (see :func:`available`).
    """
    import dlib  # noqa: PLC0415 -- optional package (see available())

    detector, predictor = _models()
    out: list[np.ndarray | None] = []
    window: Box | None = None
    for frame in frames:
        box = _detect(frame, window, detector)
        window = box
        if box is None:
            out.append(None)
            continue
        shape = predictor(np.ascontiguousarray(frame), dlib.rectangle(*box))
        out.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32))
    return out


def mouth_boxes(frames: np.ndarray, margin: float = 0.25) -> list[Box | None]:
    """A box around the lips in each ``[T, H, W, 3]`` frame, widened by ``margin`` of the mouth's width.

    ``None`` for a frame without a detected face.
    """
    h, w = frames.shape[1:3]
    out: list[Box | None] = []
    for points in landmarks(frames):
        if points is None:
            out.append(None)
            continue
        lips = points[_MOUTH]
        (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
        pad = margin * (x1 - x0)
        out.append((max(0, int(x0 - pad)), max(0, int(y0 - pad)),
                    min(w, int(np.ceil(x1 + pad)) + 1), min(h, int(np.ceil(y1 + pad)) + 1)))  # fmt: skip
    return out


def opening(points: np.ndarray) -> float:
    """How far the mouth of one face's 68 landmarks is open: inner-lip gap over the outer eye-corner distance."""
    gap = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in _INNER_PAIRS])
    return float(gap / max(np.linalg.norm(points[_EYE_CORNERS[0]] - points[_EYE_CORNERS[1]]), 1e-6))


def mouth_opening(frames: np.ndarray) -> np.ndarray:
    """Mouth opening per ``[T, H, W, 3]`` frame (see :func:`opening`), ``[T]`` float32, ``NaN`` without a face."""
    return mouth_openings(landmarks(frames))


def mouth_openings(points: list[np.ndarray | None]) -> np.ndarray:
    """Mouth opening of each frame's :func:`landmarks` (``None``: no face, ``NaN`` in the ``[T]`` float32 result)."""
    return np.array([np.nan if p is None else opening(p) for p in points], dtype=np.float32)
