"""A content fingerprint of the three encoders, so cached latents can tell whether they are stale."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ._common import EncoderError, EncoderPaths
from .audio import OFFICIAL_CONFIG_FILE, OFFICIAL_WEIGHTS_FILE, _resolve_audio
from .text import _EXPECTED as _TEXT_EXPECTED
from .video import _resolve_video

#: Bumped whenever what the wrappers compute from the same weights changes (normalisation, rounding).
_NUMERICS_VERSION = "hhtune-encoders-1"
_FULL_LIMIT = 1 << 20  # files up to 1 MiB are hashed whole
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16  # bigger ones: their size and 16 evenly spaced 64 KiB slices
_TEXT_SUFFIXES = (".json", ".model", ".safetensors", ".bin", ".txt")


def encoders_fingerprint(paths: EncoderPaths) -> str:
    """A stable 16-hex-digit hash of the encoders' configs, tokenizer and a sample of their weight bytes.

    It depends on file contents and names relative to each encoder's folder, not on where the
    folders are, so a copied folder keeps its fingerprint and a changed weight changes it.
    """
    h = hashlib.sha256(_NUMERICS_VERSION.encode())
    kind, where = _resolve_video(paths.video_vae)
    _hash_files(h, "video", [where] if where.is_file() else _weights_and_config(where))
    kind, where = _resolve_audio(paths.audio_vae)
    official = [where / OFFICIAL_CONFIG_FILE, where / OFFICIAL_WEIGHTS_FILE]
    _hash_files(h, "audio", official if kind == "official" else _weights_and_config(where))
    text = Path(paths.text_encoder)
    if not (text / "config.json").is_file():
        raise EncoderError(f"text encoder not found at {text}: expected {_TEXT_EXPECTED}")
    _hash_files(h, "text", sorted(p for p in text.iterdir() if p.is_file() and p.suffix in _TEXT_SUFFIXES))
    return h.hexdigest()[:16]


def _weights_and_config(folder: Path) -> list[Path]:
    return [folder / "config.json", *sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))]


def _hash_files(h, role: str, files: list[Path]) -> None:
    h.update(f"[{role}]".encode())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if size <= _FULL_LIMIT:
                h.update(fh.read())
                continue
            for i in range(_SAMPLES):
                fh.seek((size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
                h.update(fh.read(_SAMPLE_BYTES))
