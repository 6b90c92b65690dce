"""The metrics an evaluation reports, each from a model that ships inside a pip wheel, so they run offline.

One module per metric; each returns a :class:`MetricResult`, with ``unavailable`` set (and no value) when
its optional package or model is missing here, so the other metrics still run:

* :mod:`.voice` - Resemblyzer speaker similarity to the training clips' voice;
* :mod:`.dnsmos` - speech quality by DNSMOS (speechmos);
* :mod:`.mouth_sync` - lip-sync: mouth opening from dlib landmarks (:mod:`hhtune.face`) against the speech envelope;
* :mod:`.face_identity` - dlib's face-recognition ResNet against the training faces;
* :mod:`.look` - colour histograms and latent statistics against the footage, and drift from the base model.
"""

from __future__ import annotations

from ... import face
from . import dnsmos, face_identity, voice
from .dnsmos import speech_quality
from .face_identity import face_similarity
from .look import drift, look_distance
from .mouth_sync import lip_sync
from .result import MetricResult
from .voice import voice_similarity

#: One plain sentence per metric, for the report.
DESCRIPTIONS: dict[str, str] = {
    "voice_similarity": "How much the generated voice sounds like the presenter in the training clips "
    "(Resemblyzer speaker similarity, 1 is the same voice); the share counts samples as close as the presenter's "
    "own clips are to each other.",
    "speech_quality": "How clean and natural the generated speech sounds on the 1-5 opinion scale "
    "(DNSMOS; garbled, metallic or noisy speech scores low).",
    "lip_sync": "How closely the mouth opens and closes with the loudness of the speech (confidence, higher is "
    "better; the offset says by how many frames the picture lags the sound).",
    "face_similarity": "How much the generated face looks like the face in the training clips "
    "(dlib face-recognition similarity, 1 is the same face).",
    "look_distance": "How far the colours of the samples are from the training footage's (0 is the same "
    "palette); compare it with the base model's to see whether training moved the look toward the footage.",
    "drift": "How much the adapter changes clips of prompts that have nothing to do with the brand, against the "
    "base model at the same seed (0 is unchanged).",
}


def available_metrics() -> dict[str, str | None]:
    """Each metric's name, with ``None`` when it can run here, else the reason it cannot."""
    return {
        "voice_similarity": voice.available(),
        "speech_quality": dnsmos.available(),
        "lip_sync": face.available(),
        "face_similarity": face_identity.available(),
        "look_distance": None,
        "drift": None,
    }


__all__ = ["DESCRIPTIONS", "MetricResult", "available_metrics", "drift", "face_similarity", "lip_sync",
           "look_distance", "speech_quality", "voice_similarity"]  # fmt: skip
