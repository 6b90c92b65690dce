"""Helpers of the data_prep tests: real media files written with ffmpeg."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SAMPLE = Path(__file__).parents[2] / "data_prep" / "sample_footage"
SENTENCE = "good morning and welcome to the show"


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; fail the test on an error."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def make_clip(path: Path, *, size: str = "96x64", seconds: float = 2.0, fps: int = 25, audio: str | None = "sine=f=220",
              rate: int = 16000, channels: int = 1, vcodec: str = "libx264", acodec: str = "aac",
              extra: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """A test-pattern video with a lavfi audio source (or none)."""
    inputs = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={seconds}"]
    maps: list[str] = []
    if audio:
        inputs += ["-f", "lavfi", "-i", f"{audio}:d={seconds}"]
        maps = ["-c:a", acodec, "-ar", str(rate), "-ac", str(channels)]
    ffmpeg(*inputs, "-c:v", vcodec, "-pix_fmt", "yuv420p", *maps, *extra, "-shortest", str(path))
    return path


def speech_clip(path: Path, speech: Path, *, size: str = "96x64", fps: int = 25, extra: tuple[str, ...] = ()) -> Path:
    """A test-pattern video over an espeak-ng sentence."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d=10", "-i", str(speech), "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", *extra, "-shortest", str(path))  # fmt: skip
    return path


def write_metadata(folder: Path, rows: list[dict]) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
