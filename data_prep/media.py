"""Stage 1: probing and decoding footage.

* streams, duration, frame rate, rotation: ``ffprobe`` (decord exposes neither rotation nor the audio layout);
* frames: ``decord``, resampled to 25 fps by nearest-frame index;
* audio: ``ffmpeg`` pulls the track out of the container (librosa/soundfile cannot open mp4/mkv/webm)
  as float32 WAV at its own rate, read with ``soundfile``, then resampled with ``librosa`` (soxr):
  51200 Hz stereo for the audio VAE and 16 kHz mono for alignment, from one decode.
"""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25
AUDIO_RATE = 51200
ALIGN_RATE = 16000
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

    stereo: np.ndarray  # [2, N] float32 at AUDIO_RATE
    mono16k: np.ndarray  # [M] float32 at ALIGN_RATE


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
            rotation = int(round(-float(sd["rotation"]))) % 360
    if "rotate" in v.get("tags", {}):
        rotation = int(v["tags"]["rotate"]) % 360
    return rotation


class FrameReader:
    """Frames of one file at 25 fps through decord (one open reader for all the clips cut from it)."""

    def __init__(self, path: str | Path, info: Probe) -> None:
        import decord

        self.info = info
        try:
            self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises its own DECORDError / RuntimeError for broken streams
            raise MediaError(f"frames could not be decoded ({type(e).__name__}: {str(e)[:160]})") from e
        if len(self._vr) == 0:
            raise MediaError("the video stream has no frames")

    def read(self, start: float, num_frames: int) -> np.ndarray:
        """``num_frames`` RGB frames from ``start`` s, ``[F, H, W, 3]`` uint8, displayed orientation."""
        n = len(self._vr)
        idx = np.clip(np.round((start + np.arange(num_frames) / FPS) * self.info.fps).astype(np.int64), 0, n - 1)
        try:
            frames = self._vr.get_batch(idx.tolist()).asnumpy()
        except Exception as e:
            raise MediaError(f"frames could not be decoded ({type(e).__name__}: {str(e)[:160]})") from e
        return _orient(frames, self.info)


def _orient(frames: np.ndarray, info: Probe) -> np.ndarray:
    # decord builds whose FFmpeg autorotates return displayed frames already; rotate only coded ones.
    if info.rotation in (90, 270) and frames.shape[1:3] == (info.width, info.height) != (info.height, info.width):
        return np.ascontiguousarray(np.rot90(frames, k=3 if info.rotation == 90 else 1, axes=(1, 2)))
    if info.rotation == 180 and frames.shape[1:3] == (info.height, info.width):
        return np.ascontiguousarray(frames[:, ::-1, ::-1])
    return frames


def read_frames(path: str | Path, start: float, num_frames: int, info: Probe) -> np.ndarray:
    """``num_frames`` RGB frames at 25 fps from ``start`` seconds, ``[F, H, W, 3]`` uint8, rotation applied."""
    return FrameReader(path, info).read(start, num_frames)


def _extract(path: str | Path, channels: int) -> tuple[np.ndarray, int]:
    """The audio track as ``[channels, N]`` float32 at its own rate. ffmpeg does the container/codec work and
    the down-mix (5.1 -> stereo with its standard matrix, centre and surrounds included)."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-vn", "-ac", str(channels),
           "-c:a", "pcm_f32le", "-f", "wav", "-"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0 or len(res.stdout) <= 44:
        raise MediaError(f"audio could not be decoded ({res.stderr.decode(errors='replace').strip()[-200:] or 'no samples'})")
    import soundfile

    # ffmpeg writes an unknown length into a WAV header sent to a pipe; soundfile reads to the end anyway
    data, rate = soundfile.read(io.BytesIO(res.stdout), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(rate)


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(x, orig_sr=rate, target_sr=target, res_type="soxr_hq", axis=-1).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int, channels: int = 1) -> np.ndarray:
    """The whole audio track at ``sample_rate``: ``[N]`` for mono, ``[channels, N]`` otherwise (float32)."""
    data, rate = _extract(path, channels)
    out = _resample(data, rate, sample_rate)
    return out[0] if channels == 1 else out


def decode_audio(path: str | Path) -> Audio:
    """One decode, two products: 51200 Hz stereo (mono duplicated, surround down-mixed) and 16 kHz mono."""
    stereo, rate = _extract(path, 2)
    return Audio(_resample(stereo, rate, AUDIO_RATE), _resample(stereo.mean(axis=0), rate, ALIGN_RATE))


__all__ = ["ALIGN_RATE", "AUDIO_RATE", "Audio", "FPS", "FrameReader", "MediaError", "Probe", "VIDEO_EXTENSIONS",
           "decode_audio", "probe", "read_audio", "read_frames"]  # fmt: skip
