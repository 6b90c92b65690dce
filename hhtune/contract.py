"""The dataset contract, defined once: what ``data_prep`` writes and what training and sampling read.

* video runs at :data:`FPS` frames per second, and a clip has ``4k+1`` frames (the Wan2.2 VAE keeps the first
  frame alone and packs every following 4 into one latent frame);
* audio runs at :data:`AUDIO_SAMPLE_RATE` Hz, stereo, and one audio latent holds :data:`SAMPLES_PER_LATENT`
  samples, so there is exactly one audio latent per video frame (51200 / 2048 = 25); speech detection,
  alignment and ASR read mono at :data:`SPEECH_SAMPLE_RATE` Hz;
* pictures are resized and centre-cropped to one of :data:`BUCKETS` at a base (short side) resolution;
  :class:`LatentShape` gives the latent sizes of a clip from its pixel sizes;
* a dataset folder holds ``manifest.json`` and ``dataset/`` (Arrow rows with :data:`META_COLUMNS`, and with
  :data:`LATENT_COLUMNS` when encoded); :data:`FORMAT_VERSION` is the version of that layout, and
  :data:`READABLE_FORMAT_VERSIONS` the older ones still read (their rows lack the columns added since);
* the optional :data:`MOUTH_BOXES` column holds, per latent frame, the mouth's box on the latent grid
  (:data:`NO_MOUTH` where no face was found); :func:`latent_frame_span` says which video frames a latent frame
  covers;
* the allowed values of the settings shared across the project are the ``Literal`` types below
  (:data:`Preset`, :data:`Bucket`, :data:`ComputeDtype`, :data:`Language`).

The frame rule (:func:`frames_for`): a clip of ``seconds`` has the **largest** ``4k+1`` frame count whose
duration ``frames / FPS`` does not exceed ``seconds`` (at least 1 frame). Never longer than asked: a clip
cut from footage must fit inside it, and a generated clip never runs past the requested length.
0.5 s -> 9 frames (0.36 s; 13 frames would be 0.52 s), 2 s -> 49 frames, 5 s -> 125 frames.
A 5 s clip in the 16:9 bucket at 256 px (480x256) has latents ``[48, 32, 16, 30]`` and ``[125, 64]``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

# -- allowed values -------------------------------------------------------------------------------------------------
Preset = Literal["15b", "mid", "tiny"]
Bucket = Literal["16:9", "9:16", "4:3", "1:1"]
ComputeDtype = Literal["auto", "bf16", "fp32"]
Language = Literal["en", "zh", "yue", "ja", "ko", "de", "fr"]
# The published checkpoints of one preset's shapes: two first-stage models and two super-resolution stages.
Variant = Literal["base", "distill", "sr_540p", "sr_1080p"]
SrResolution = Literal["540p", "1080p"]  # the super-resolution stages (official 540p_sr/ and 1080p_sr/)
PRESETS: tuple[str, ...] = get_args(Preset)
VARIANTS: tuple[str, ...] = get_args(Variant)
SR_VARIANTS: tuple[str, ...] = ("sr_540p", "sr_1080p")
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)
LANGUAGES: tuple[str, ...] = get_args(Language)
SR_RESOLUTIONS: tuple[str, ...] = get_args(SrResolution)
UNKNOWN_LANGUAGE = "unknown"  # the language column's value when none is known

# -- time and sound -------------------------------------------------------------------------------------------------
FPS = 25
AUDIO_SAMPLE_RATE = 51200  # what the Stable Audio VAE is fed (official ``load_audio_and_encode``)
SAMPLES_PER_LATENT = 2048  # the product of the Oobleck strides 2*4*4*8*8
AUDIO_LATENTS_PER_SECOND = AUDIO_SAMPLE_RATE // SAMPLES_PER_LATENT
assert AUDIO_LATENTS_PER_SECOND == FPS, "one audio latent per video frame"
SPEECH_SAMPLE_RATE = 16000  # what speech detection, alignment and ASR read

# -- pictures and latents -------------------------------------------------------------------------------------------
BUCKETS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "4:3": (4, 3), "1:1": (1, 1)}
assert tuple(BUCKETS) == get_args(Bucket)
VIDEO_LATENT_CHANNELS = 48  # Wan2.2 VAE
VIDEO_STRIDE = (4, 16, 16)  # frames, height, width per latent (after the first frame)
AUDIO_LATENT_CHANNELS = 64  # Stable Audio Open 1.0
#: Each side of a super-resolution stage over the base stage's: the official examples render 256 rows, then 512
#: (540p) or 1088 (1080p).
SR_SCALES: dict[str, float] = {"540p": 2.0, "1080p": 4.25}
assert tuple(SR_SCALES) == SR_RESOLUTIONS
TEXT_LENGTH = 640  # text features are padded or trimmed to this many tokens (official ``t5_gemma_target_length``)

# -- the dataset folder ---------------------------------------------------------------------------------------------
FORMAT_VERSION = 2
#: Versions this hhtune reads: a version 1 dataset lacks :data:`HAS_AUDIO_COLUMN` (every clip had sound),
#: :data:`MOUTH_BOXES` and the optional :data:`SR_VIDEO_LATENTS`.
READABLE_FORMAT_VERSIONS = (1, 2)
VIDEO_LATENTS, AUDIO_LATENTS, TEXT_EMBEDS = "video_latents", "audio_latents", "text_embeds"
REFERENCE_LATENTS = "reference_latents"  # optional: the first frame's latents, null where a clip has none
#: Optional (format 2): the clip encoded again at a super-resolution size (:func:`sr_size`, the manifest's
#: ``settings.sr_resolution``) next to :data:`VIDEO_LATENTS` at the base size; what an SR LoRA learns to reach.
SR_VIDEO_LATENTS = "sr_video_latents"
#: Columns every dataset has, in the order data_prep writes them.
META_COLUMNS = ("clip_id", "source_file", "start_s", "end_s", "language", "caption", "transcript", "alignment",
                "speech_mask", "bucket", "width", "height", "num_frames")  # fmt: skip
SPEAKER_COLUMN = "speaker"  # optional metadata: who speaks, as the captions name them
#: Optional (format 2): ``False`` where the footage had no audio track; its audio latents encode silence and the
#: audio loss is masked for it. Absent (version 1 datasets) means ``True`` for every row.
HAS_AUDIO_COLUMN = "has_audio"

#: Optional metadata (``data_prep`` option ``mouth_regions``): per latent frame ``[x0, y0, x1, y1]`` in latent cells
#: (16x16 pixels of the stored clip; x0, y0 inclusive, x1, y1 exclusive): every cell the mouth touches in any of the
#: video frames the latent frame covers (:func:`latent_frame_span`); :data:`NO_MOUTH` when none of them has a face.
MOUTH_BOXES = "mouth_boxes"
NO_MOUTH = (-1, -1, -1, -1)
#: Columns an encoded dataset has on top (``manifest["encoded"]``); :data:`REFERENCE_LATENTS` may follow.
LATENT_COLUMNS = (VIDEO_LATENTS, AUDIO_LATENTS, TEXT_EMBEDS)
#: The Arrow type of every column, in the order of the rows: a value type, ``[]`` per list level (latent shapes
#: differ per bucket, so latents are nested float32 lists).
COLUMN_TYPES: dict[str, str] = {
    "clip_id": "string", "source_file": "string", "start_s": "float64", "end_s": "float64", "language": "string",
    "caption": "string", "transcript": "string", "alignment": "string", "speech_mask": "float32[]", "bucket": "string",
    "width": "int32", "height": "int32", "num_frames": "int32", SPEAKER_COLUMN: "string", HAS_AUDIO_COLUMN: "bool",
    MOUTH_BOXES: "int32[][]",
    VIDEO_LATENTS: "float32[][][][]", AUDIO_LATENTS: "float32[][]", TEXT_EMBEDS: "float32[][]",
    REFERENCE_LATENTS: "float32[][][][]", SR_VIDEO_LATENTS: "float32[][][][]",
}  # fmt: skip
assert tuple(COLUMN_TYPES) == (*META_COLUMNS, SPEAKER_COLUMN, HAS_AUDIO_COLUMN, MOUTH_BOXES, *LATENT_COLUMNS,
                               REFERENCE_LATENTS, SR_VIDEO_LATENTS)
# {"format_version", "fingerprint", "encoders", "settings", "encoded", "clips", "footage", ...}
MANIFEST = "manifest.json"
ROWS = "dataset"  # the Arrow rows (``Dataset.save_to_disk``)

_EPS = 1e-6  # float slack: 0.36 s is 9 frames even when 0.36 * 25 comes out as 8.999999


def frames_for(seconds: float) -> int:
    """The largest ``4k+1`` frame count that lasts at most ``seconds`` at :data:`FPS` (at least 1)."""
    return max(0, math.floor((seconds * FPS + _EPS - 1) / 4)) * 4 + 1


def frames_holding(seconds: float) -> int:
    """The smallest ``4k+1`` frame count that lasts at least ``seconds`` at :data:`FPS`."""
    return max(0, math.ceil((seconds * FPS - _EPS - 1) / 4)) * 4 + 1


def seconds_of(frames: int) -> float:
    """How long ``frames`` video frames (and as many audio latents) last."""
    return frames / FPS


def audio_samples_for(frames: int) -> int:
    """Audio samples at :data:`AUDIO_SAMPLE_RATE` that go with ``frames`` video frames (one latent each)."""
    return frames * SAMPLES_PER_LATENT


def latent_frame_span(latent_frame: int) -> tuple[int, int]:
    """``(first, end)`` video frames (end exclusive) latent frame ``latent_frame`` covers: frame 0 alone for latent
    frame 0, then :data:`VIDEO_STRIDE` ``[0]`` frames each (latent frame 1 covers frames 1-4)."""
    if latent_frame == 0:
        return 0, 1
    return VIDEO_STRIDE[0] * (latent_frame - 1) + 1, VIDEO_STRIDE[0] * latent_frame + 1


def latent_frame_of(frame: int) -> int:
    """The latent frame that covers video frame ``frame`` (the inverse of :func:`latent_frame_span`)."""
    return (frame + VIDEO_STRIDE[0] - 1) // VIDEO_STRIDE[0]


def bucket_size(bucket: str, base: int) -> tuple[int, int]:
    """``(width, height)`` of a bucket: the short side is ``base``, the long side rounded up to 32 (480x256 at 256)."""
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}; allowed: {', '.join(BUCKETS)}")
    w, h = BUCKETS[bucket]
    if w >= h:
        return int(math.ceil(base * w / h / 32) * 32), base
    return base, int(math.ceil(base * h / w / 32) * 32)


def sr_size(bucket: str, base: int, sr: str) -> tuple[int, int]:
    """``(width, height)`` of the ``sr`` stage over a ``base`` clip: each side of :func:`bucket_size` times
    :data:`SR_SCALES`, rounded up to 32 (whole 2x2 latent patches), so the base aspect is kept (at 256, 16:9:
    960x512 for 540p, 2048x1088 for 1080p)."""
    if sr not in SR_SCALES:
        raise ValueError(f"unknown super-resolution {sr!r}; allowed: {', '.join(SR_SCALES)}")
    return tuple(int(math.ceil(side * SR_SCALES[sr] / 32) * 32) for side in bucket_size(bucket, base))


def nearest_bucket(width: int, height: int, allowed: list[str]) -> str:
    """The allowed bucket whose aspect ratio is nearest (in log space) to ``width/height``."""
    ratio = math.log(width / height)
    return min(allowed, key=lambda b: abs(math.log(BUCKETS[b][0] / BUCKETS[b][1]) - ratio))


class LatentShape(NamedTuple):
    """The latent sizes of one clip: ``frames`` video frames (as many audio latents) and the video latent grid."""

    frames: int
    latent_frames: int
    latent_height: int
    latent_width: int

    @classmethod
    def from_pixels(cls, width: int, height: int, frames: int) -> LatentShape:
        """The latents of ``frames`` (``4k+1``) frames of ``width x height`` pixels (sides floored to the stride)."""
        if frames < 1 or (frames - 1) % VIDEO_STRIDE[0]:
            raise ValueError(f"a clip has 4k+1 frames, got {frames}")
        ft, fh, fw = VIDEO_STRIDE
        return cls(frames, (frames - 1) // ft + 1, height // fh, width // fw)

    @property
    def video(self) -> tuple[int, int, int, int]:
        """``[C, T, H, W]`` of the video latents."""
        return VIDEO_LATENT_CHANNELS, self.latent_frames, self.latent_height, self.latent_width

    @property
    def reference(self) -> tuple[int, int, int, int]:
        """``[C, 1, H, W]`` of a reference first frame's latents."""
        return VIDEO_LATENT_CHANNELS, 1, self.latent_height, self.latent_width

    @property
    def audio(self) -> tuple[int, int]:
        """``[La, C]`` of the audio latents: one per video frame."""
        return self.frames, AUDIO_LATENT_CHANNELS

    @property
    def audio_samples(self) -> int:
        """Audio samples at :data:`AUDIO_SAMPLE_RATE` the audio latents hold."""
        return audio_samples_for(self.frames)


__all__ = ["AUDIO_LATENTS", "AUDIO_LATENTS_PER_SECOND", "AUDIO_LATENT_CHANNELS", "AUDIO_SAMPLE_RATE", "BUCKETS",
           "COLUMN_TYPES", "COMPUTE_DTYPES", "FORMAT_VERSION", "FPS", "HAS_AUDIO_COLUMN", "LANGUAGES",
           "LATENT_COLUMNS", "MANIFEST", "META_COLUMNS", "MOUTH_BOXES", "NO_MOUTH", "PRESETS",
           "READABLE_FORMAT_VERSIONS", "REFERENCE_LATENTS", "ROWS", "SAMPLES_PER_LATENT", "SPEAKER_COLUMN",
           "SPEECH_SAMPLE_RATE", "SR_RESOLUTIONS", "SR_SCALES", "SR_VARIANTS", "SR_VIDEO_LATENTS", "TEXT_EMBEDS",
           "TEXT_LENGTH", "UNKNOWN_LANGUAGE", "VARIANTS", "VIDEO_LATENTS", "VIDEO_LATENT_CHANNELS", "VIDEO_STRIDE",
           "Bucket", "ComputeDtype", "Language", "LatentShape", "Preset", "SrResolution", "Variant",
           "audio_samples_for", "bucket_size", "frames_for", "frames_holding", "latent_frame_of",
           "latent_frame_span", "nearest_bucket",
           "seconds_of", "sr_size"]  # fmt: skip
