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


def long_speech_footage(folder: Path, name: str, language: str, voice: str, sentences: list[str], *,
                        pauses: list[float], fps: int = 25, size: str = "64x48",
                        spoken: list[str] | None = None) -> tuple[Path, list[tuple[float, float]]]:  # fmt: skip
    """Minutes-style footage in miniature: ``sentences`` spoken by espeak-ng one after another with ``pauses``
    (seconds) before each, a per-sentence SRT cue at the exact spoken times, and a tiny test-pattern picture.
    ``spoken`` is what espeak-ng reads instead of the text (pinyin for Mandarin: its plain ``cmn`` voice is broken).
    Returns the mp4 and the spoken ``(start, end)`` of every sentence."""
    import numpy as np
    import soundfile

    rate, parts, cues, t = 16000, [], [], 0.0
    for k, (text, pause) in enumerate(zip(spoken or sentences, pauses)):
        raw = folder / f"{name}.{k}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
        wave, r = soundfile.read(raw, dtype="float32")
        raw.unlink()
        idx = np.flatnonzero(np.abs(wave) > 1e-3)
        wave = wave[idx[0] : idx[-1] + 1]  # espeak's own silence off: the cue is the speech
        import librosa

        wave = librosa.resample(wave, orig_sr=r, target_sr=rate)
        parts += [np.zeros(int(pause * rate), np.float32), wave]
        cues.append((t + pause, t + pause + len(wave) / rate))
        t += pause + len(wave) / rate
    parts.append(np.zeros(int(0.7 * rate), np.float32))
    wav = folder / f"{name}.wav.tmp"
    soundfile.write(wav, np.concatenate(parts), rate, format="WAV")
    duration = t + 0.7
    mp4 = folder / f"{name}.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={duration:.3f}", "-i", str(wav), "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(mp4))  # fmt: skip
    wav.unlink()
    stamp = lambda s: (f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{int(s % 60):02d},"
                       f"{round(s % 1 * 1000) % 1000:03d}")
    (folder / f"{name}.srt").write_text("".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n"
                                                for i, ((a, b), text)
                                                in enumerate(zip(cues, sentences), 1)))  # fmt: skip
    return mp4, cues
