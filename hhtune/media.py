"""Reading footage: probing, frames at 25 fps resized into a bucket, and the audio track, decoded once.

* streams, duration, frame rate, rotation, audio layout: ``ffprobe`` (one JSON call covers every container
  and both rotation conventions);
* frames: PyAV (FFmpeg's libraries in process). A :class:`FrameReader` decodes forward through the file once
  for all the clips cut from it, picks the nearest source frame for each 25 fps instant, and lets swscale
  convert and scale only those frames straight to the size that covers the bucket (no full-size RGB copy);
* audio: PyAV decodes the track once and swresample down-mixes it to stereo (5.1 with FFmpeg's standard
  matrix); both products (51200 Hz stereo for the audio VAE, 16 kHz mono for speech) are resampled in
  memory with soxr through librosa.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import librosa
import numpy as np

from .contract import AUDIO_SAMPLE_RATE, FPS, SPEECH_SAMPLE_RATE

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
    rotation: int  # clockwise degrees the player turns the coded picture
    video_codec: str
    audio_channels: int  # 0 = no audio track
    audio_rate: int
    audio_codec: str = ""
    audio_layout: str = ""
    streams: int = 0


@dataclass
class Audio:
    """The decoded audio of a file: stereo for the audio VAE, mono for alignment."""

    stereo: np.ndarray  # [2, N] float32 at AUDIO_SAMPLE_RATE
    mono16k: np.ndarray  # [M] float32 at SPEECH_SAMPLE_RATE


def probe(path: str | Path) -> Probe:
    """Streams, duration, frame rate and rotation of ``path`` (ffprobe); :class:`MediaError` for unusable files."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("empty file")
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "ffprobe failed"
        last = last.replace(f"{path}: ", "")
        raise MediaError(f"not a readable media file ({last})")
    info = json.loads(res.stdout)
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not video:
        raise MediaError("no video stream (audio-only file)" if audio else "no video stream")
    v = video[0]
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    w, h = int(v.get("width", 0)), int(v.get("height", 0))
    rotation = _rotation(v)
    if rotation in (90, 270):
        w, h = h, w
    duration = float(info.get("format", {}).get("duration") or v.get("duration") or 0.0)
    if duration <= 0 or fps <= 0 or w < 16 or h < 16:
        raise MediaError(f"unusable video stream (duration {duration:.2f}s, {fps:.1f} fps, {w}x{h})")
    a = audio[0] if audio else {}
    return Probe(duration, fps, w, h, rotation, v.get("codec_name", "?"), int(a.get("channels", 0)),
                 int(a.get("sample_rate", 0) or 0), a.get("codec_name", ""), a.get("channel_layout", ""),
                 len(streams))  # fmt: skip


def _rate(text: str | None) -> float:
    num, _, den = (text or "0/1").partition("/")
    try:
        return float(num) / float(den or 1) if float(den or 1) else 0.0
    except ValueError:
        return 0.0


def _rotation(v: dict) -> int:
    """Clockwise display rotation: the legacy ``rotate`` tag is clockwise; the display matrix
    (ffprobe's side-data ``rotation``) is counter-clockwise."""
    rotation = 0
    for sd in v.get("side_data_list", []) or []:
        if "rotation" in sd:
            rotation = round(-float(sd["rotation"])) % 360
    if "rotate" in v.get("tags", {}):
        rotation = int(v["tags"]["rotate"]) % 360
    return rotation




def _cover(width: int, height: int, target: tuple[int, int] | None) -> tuple[int, int]:
    """The size ``width x height`` scales to so that it covers ``target`` (aspect kept), or itself."""
    if target is None:
        return width, height
    tw, th = target
    scale = max(tw / width, th / height)
    return max(tw, round(width * scale)), max(th, round(height * scale))


class FrameReader:
    """Frames of one file at 25 fps, optionally resized and centre-cropped to ``size`` (width, height).

    Reads forward: clips requested in time order cost one decode of the file in total; a request
    earlier than the last one reopens the file.
    """

    def __init__(self, path: str | Path, info: Probe, size: tuple[int, int] | None = None) -> None:
        self.path, self.info, self.size = str(path), info, size
        w, h = _cover(info.width, info.height, size)  # displayed orientation
        self._scaled = (h, w) if info.rotation in (90, 270) else (w, h)  # coded orientation
        self._open()

    def _open(self) -> None:
        try:
            self._container = av.open(self.path)
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._frames = self._container.decode(stream)
        except (av.FFmpegError, IndexError) as e:
            raise MediaError(f"frames could not be decoded ({type(e).__name__}: {str(e)[:160]})") from e
        self._pos, self._frame, self._rgb = -1, None, None

    def close(self) -> None:
        self._container.close()

    def _advance_to(self, index: int) -> None:
        if index < self._pos:
            self.close()
            self._open()
        while self._pos < index:
            try:
                frame = next(self._frames)
            except StopIteration:  # fewer frames than the probed duration promised: hold the last one
                break
            except av.FFmpegError as e:
                raise MediaError(f"frames could not be decoded ({type(e).__name__}: {str(e)[:160]})") from e
            self._pos, self._frame, self._rgb = self._pos + 1, frame, None
        if self._frame is None:
            raise MediaError("the video stream has no frames")

    def _current(self) -> np.ndarray:
        if self._rgb is None:
            w, h = self._scaled
            rgb = self._frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
            self._rgb = _crop(_orient(rgb, self.info.rotation), self.size)
        return self._rgb

    def read(self, start: float, num_frames: int) -> np.ndarray:
        """``num_frames`` RGB frames from ``start`` s, ``[F, H, W, 3]`` uint8, displayed orientation."""
        last = max(0, round(self.info.duration * self.info.fps) - 1)
        idx = np.clip(np.round((start + np.arange(num_frames) / FPS) * self.info.fps).astype(np.int64), 0, last)
        out = []
        for i in idx:
            self._advance_to(int(i))
            out.append(self._current())
        return np.stack(out)


def _orient(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """A coded picture turned the way a player shows it (``rotation`` clockwise degrees)."""
    if rotation == 90:
        return np.rot90(rgb, k=3)
    if rotation == 270:
        return np.rot90(rgb, k=1)
    if rotation == 180:
        return rgb[::-1, ::-1]
    return rgb


def _crop(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return np.ascontiguousarray(rgb)
    w, h = size
    top, left = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    return np.ascontiguousarray(rgb[top : top + h, left : left + w])


def resize_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``[F, H, W, 3]`` uint8 frames to cover ``width x height`` (antialiased), then centre-crop."""
    import torch  # noqa: PLC0415 -- heavy: torch loads in seconds; the rest of this module is numpy and PyAV
    import torch.nn.functional as F  # noqa: PLC0415 -- heavy: torch loads in seconds; the rest of this module is numpy and PyAV

    _, h, w, _ = frames.shape
    nw, nh = _cover(w, h, (width, height))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _extract(path: str | Path, channels: int) -> tuple[np.ndarray, int]:
    """The first audio track as ``[channels, N]`` float32 at its own rate, decoded once by PyAV; swresample
    does the down-mix (5.1 -> stereo with FFmpeg's standard matrix, centre and surrounds included)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError("audio could not be decoded (no audio track)")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="fltp", layout="stereo" if channels == 2 else "mono", rate=rate)
            chunks = []
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.FFmpegError as e:
        raise MediaError(f"audio could not be decoded ({type(e).__name__}: {str(e)[:160]})") from e
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise MediaError("audio could not be decoded (no samples)")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32), int(rate)


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x.astype(np.float32, copy=False)

    return librosa.resample(x, orig_sr=rate, target_sr=target, res_type="soxr_hq", axis=-1).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int, channels: int = 1) -> np.ndarray:
    """The whole audio track at ``sample_rate``: ``[N]`` for mono, ``[channels, N]`` otherwise (float32)."""
    data, rate = _extract(path, channels)
    out = _resample(data, rate, sample_rate)
    return out[0] if channels == 1 else out


def decode_audio(path: str | Path) -> Audio:
    """One decode, two products: 51200 Hz stereo (mono duplicated, surround down-mixed) and 16 kHz mono."""
    stereo, rate = _extract(path, 2)
    return Audio(_resample(stereo, rate, AUDIO_SAMPLE_RATE), _resample(stereo.mean(axis=0), rate, SPEECH_SAMPLE_RATE))


__all__ = [
    "FPS",
    "VIDEO_EXTENSIONS",
    "Audio",
    "FrameReader",
    "MediaError",
    "Probe",
    "decode_audio",
    "probe",
    "read_audio",
    "resize_crop",
]  # fmt: skip
