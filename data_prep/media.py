"""Probing and decoding footage: ffprobe for streams, decord for frames, ffmpeg for audio."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi")


class MediaError(ValueError):
    """A file that cannot be used as footage, with the reason shown in the report."""


@dataclass
class Probe:
    """What is in a media file."""

    duration: float
    fps: float
    width: int  # as displayed (rotation applied)
    height: int
    rotation: int
    video_codec: str
    audio_channels: int  # 0 = no audio track
    audio_rate: int


def probe(path: str | Path) -> Probe:
    """Streams, duration, frame rate and rotation of ``path`` (ffprobe)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("empty file")
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise MediaError(f"not a readable media file ({res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'ffprobe failed'})")
    info = json.loads(res.stdout)
    video = [s for s in info.get("streams", []) if s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic", 0) == 0]
    audio = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not video:
        raise MediaError("no video stream (audio-only file)" if audio else "no video stream")
    v = video[0]
    num, den = (v.get("avg_frame_rate") or v.get("r_frame_rate") or "0/1").split("/")
    fps = float(num) / float(den) if float(den) else 0.0
    # Clockwise display rotation: the legacy `rotate` tag is clockwise; the display matrix
    # (what ffprobe reports as side-data "rotation") is counter-clockwise.
    rotation = 0
    for sd in v.get("side_data_list", []) or []:
        if "rotation" in sd:
            rotation = int(-float(sd["rotation"])) % 360
    if "rotate" in v.get("tags", {}):
        rotation = int(v["tags"]["rotate"]) % 360
    w, h = int(v.get("width", 0)), int(v.get("height", 0))
    if rotation in (90, 270):
        w, h = h, w
    duration = float(info.get("format", {}).get("duration") or v.get("duration") or 0.0)
    if duration <= 0 or fps <= 0 or w < 16 or h < 16:
        raise MediaError(f"unusable video stream (duration {duration:.2f}s, {fps:.1f} fps, {w}x{h})")
    a = audio[0] if audio else {}
    return Probe(duration, fps, w, h, rotation, v.get("codec_name", "?"), int(a.get("channels", 0)),
                 int(a.get("sample_rate", 0) or 0))  # fmt: skip


def read_frames(path: str | Path, start: float, num_frames: int, info: Probe) -> np.ndarray:
    """``num_frames`` RGB frames at 25 fps from ``start`` seconds, ``[F, H, W, 3]`` uint8, rotation applied."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    idx = np.clip(np.round((start + np.arange(num_frames) / FPS) * info.fps).astype(np.int64), 0, n - 1)
    frames = vr.get_batch(idx.tolist()).asnumpy()
    # decord builds with FFmpeg's autorotation apply the display matrix themselves (checked against
    # `ffmpeg -i` output); rotate here only when the frames still have the coded orientation.
    if info.rotation in (90, 270) and frames.shape[1:3] == (info.width, info.height) != (info.height, info.width):
        frames = np.ascontiguousarray(np.rot90(frames, k=3 if info.rotation == 90 else 1, axes=(1, 2)))
    return frames


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole audio track as mono float32 at ``sample_rate`` (ffmpeg decodes any codec and layout, 5.1 included,
    which librosa/soundfile cannot read from video containers)."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0:
        raise MediaError(f"audio could not be decoded ({res.stderr.decode(errors='replace').strip()[-200:]})")
    return np.frombuffer(res.stdout, dtype=np.float32).copy()
