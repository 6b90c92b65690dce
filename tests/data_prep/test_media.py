"""Stage 1 on real files: probing, PyAV frames at 25 fps in every container/codec, audio layouts and rates."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from _dp_footage import ffmpeg, make_clip

from hhtune.contract import AUDIO_SAMPLE_RATE
from hhtune.media import FrameReader, MediaError, decode_audio, probe, read_audio


@pytest.mark.parametrize("name,vcodec,acodec", [
    ("a.mp4", "libx264", "aac"), ("a.mov", "libx264", "aac"), ("a.webm", "libvpx-vp9", "libopus"),
    ("a.mkv", "libx265", "aac"),
])  # fmt: skip
def test_containers_and_codecs_decode_at_25_fps(tmp_path, name, vcodec, acodec):
    extra = ("-x265-params", "log-level=none") if vcodec == "libx265" else ()
    path = make_clip(tmp_path / name, fps=30, seconds=1.0, vcodec=vcodec, acodec=acodec, rate=48000, extra=extra)
    info = probe(path)
    assert (info.width, info.height, round(info.fps)) == (96, 64, 30) and info.audio_channels == 1
    assert info.video_codec == {"libx264": "h264", "libvpx-vp9": "vp9", "libx265": "hevc"}[vcodec]
    frames = FrameReader(path, info).read(0.0, 21)
    assert frames.shape == (21, 64, 96, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[20])  # testsrc2 moves: frames really advance


def test_rotation_is_applied(tmp_path):
    src = make_clip(tmp_path / "u.mp4", size="96x64", seconds=0.5)
    ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(tmp_path / "r.mp4"))
    info = probe(tmp_path / "r.mp4")
    assert info.rotation in (90, 270) and (info.width, info.height) == (64, 96)
    ours = FrameReader(tmp_path / "r.mp4", info).read(0.0, 1)[0].astype(np.float32)
    # what a player shows: ffmpeg's own autorotated decode of the first frame
    shown = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "r.mp4"), "-frames:v", "1", "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout  # fmt: skip
    shown = np.frombuffer(shown, np.uint8).reshape(96, 64, 3).astype(np.float32)
    assert ours.shape == (96, 64, 3) and np.abs(ours - shown).mean() < 8
    assert np.abs(ours[::-1, ::-1] - shown).mean() > 20  # the other orientation would be far off


def test_surround_and_narrowband_audio(tmp_path):
    surround = make_clip(tmp_path / "s.mp4", audio="sine=f=440", rate=48000, channels=6, seconds=1.0)
    info = probe(surround)
    assert info.audio_channels == 6 and info.audio_layout == "5.1"
    a = decode_audio(surround)
    assert a.stereo.shape[0] == 2 and abs(a.stereo.shape[1] - AUDIO_SAMPLE_RATE) < 4096
    assert abs(len(a.mono16k) - 16000) < 1300
    assert np.abs(a.stereo).max() > 0.05
    narrow = make_clip(tmp_path / "n.mp4", audio="sine=f=300", rate=8000, channels=1, seconds=1.0)
    a = decode_audio(narrow)
    assert np.allclose(a.stereo[0], a.stereo[1])  # mono copied to both channels
    spectrum = np.abs(np.fft.rfft(a.stereo[0]))
    assert np.argmax(spectrum) * AUDIO_SAMPLE_RATE / len(a.stereo[0]) == pytest.approx(300, abs=5)
    assert read_audio(narrow, 16000).ndim == 1 and read_audio(narrow, 16000, channels=2).shape[0] == 2


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"), (b"hello, not a video", "not a readable media file"),
])  # fmt: skip
def test_unreadable_files(tmp_path, content, reason):
    (tmp_path / "x.mp4").write_bytes(content)
    with pytest.raises(MediaError, match=reason):
        probe(tmp_path / "x.mp4")


def test_audio_only_and_silent_video(tmp_path):
    ffmpeg("-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(tmp_path / "a.m4a.mp4"))
    with pytest.raises(MediaError, match="audio-only"):
        probe(tmp_path / "a.m4a.mp4")
    assert probe(make_clip(tmp_path / "v.mp4", audio=None, seconds=0.5)).audio_channels == 0
