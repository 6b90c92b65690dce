"""Regenerate the sample footage shipped with hhtune (needs ffmpeg, espeak-ng, numpy and soundfile).

Seven short clips, one per language, each a spoken sentence (espeak-ng) over a
generated picture whose "mouth" opens with the speech energy of each frame, in different
aspect ratios, frame rates and audio layouts, with sidecar transcripts in SRT, VTT
and TXT and a metadata.jsonl. Run from anywhere:

    python data_prep/sample_footage/make_sample_footage.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile

HERE = Path(__file__).parent
#: The wall colour behind the presenter of each clip, in the order of the clips.
WALLS = ("blue", "red", "green", "purple", "ochre", "teal", "plum")
CLIPS = [
    # stem, language, espeak voice, text, size, fps, audio (rate, channels), transcript kind
    ("en_presenter", "en", "en-us", "Welcome to our spring collection. It is light and bright.", "320x180", 30,
     (48000, 2), "srt"),
    ("zh_presenter", "zh", "cmn-latn-pinyin", "huan1 ying2 lai2 dao4 wo3 men5 de5 chun1 ji4 xi4 lie4", "180x320", 25,
     (44100, 1), "txt"),
    ("yue_presenter", "yue", "yue", "歡迎嚟到我哋嘅春季系列", "240x180", 24, (22050, 1), "vtt"),
    ("ja_presenter", "ja", "ja", "春のコレクションへようこそ", "200x200", 25, (48000, 2), "txt"),
    ("ko_presenter", "ko", "ko", "봄 컬렉션에 오신 것을 환영합니다", "320x180", 25, (16000, 1), "srt"),
    ("de_presenter", "de", "de", "Willkommen zu unserer Frühjahrskollektion. Sie ist leicht.", "320x180", 25,
     (48000, 2), "vtt"),
    ("fr_presenter", "fr", "fr-fr", "Bienvenue dans notre collection de printemps.", "320x180", 25, (44100, 2), "srt"),
]
# What the transcript says (Mandarin is spoken from pinyin so espeak's cmn-latn-pinyin voice works).
TRANSCRIPT = {"zh_presenter": "欢迎来到我们的春季系列"}
COLORS = ["0x1f4e79", "0x7a2e2e", "0x2e5e3a", "0x5a3a7a", "0x7a6a2e", "0x2e6a7a", "0x6a2e5a"]


def _seconds(t: float) -> str:
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def _face_frames(wav: Path, w: int, h: int, fps: int, dur: float, color: str):
    """A plain "face" on a coloured wall whose mouth opens with the speech energy of each frame ([F, h, w, 3] uint8)."""
    audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    n = round(dur * fps)
    hop = rate / fps
    rms = np.array([np.sqrt(np.mean(audio[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n)])
    opening = np.clip(rms / (np.percentile(rms, 95) + 1e-6), 0, 1)
    rgb = [int(color[2 + 2 * k : 4 + 2 * k], 16) for k in range(3)]
    base = np.empty((h, w, 3), np.uint8)
    base[:] = rgb
    base[h // 6 : h // 6 + int(h * 0.66), w // 4 : w // 4 + w // 2] = (0xE0, 0xB0, 0x90)  # face
    for x in (w // 2 - w // 8, w // 2 + w // 8 - 6):
        base[int(h * 0.38) : int(h * 0.38) + 6, x : x + 6] = 0  # eyes
    frames = np.repeat(base[None], n, axis=0)
    top, mw = int(h * 0.62), w // 5
    for i, o in enumerate(opening):
        frames[i, top : top + 3 + int(o * h / 8), w // 2 - mw // 2 : w // 2 + mw // 2] = (0x30, 0x10, 0x10)  # mouth
    return frames


def main() -> None:
    meta = []
    with tempfile.TemporaryDirectory() as tmp:
        for (stem, lang, voice, text, size, fps, (rate, ch), kind), color in zip(CLIPS, COLORS):
            wav = Path(tmp) / f"{stem}.wav"
            speech = Path(tmp) / f"{stem}_speech.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(speech), text], check=True)
            # 0.6 s of room tone before and after the sentence
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono:d=0.6", "-i",
                            str(speech),
                            "-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono:d=0.6", "-filter_complex",
                            "[0][1][2]concat=n=3:v=0:a=1[a]", "-map", "[a]", str(wav)], check=True)  # fmt: skip
            dur = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                        str(wav)],
                                       capture_output=True, text=True, check=True).stdout)  # fmt: skip
            w, h = (int(x) for x in size.split("x"))
            frames = _face_frames(wav, w, h, fps, dur, color)
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", size, "-r",
                            str(fps),
                            "-i", "-", "-i", str(wav), "-c:v", "libx264", "-preset", "veryslow", "-crf", "32",
                            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "32k", "-ar", str(rate), "-ac", str(ch),
                            "-shortest", "-movflags", "+faststart", str(HERE / f"{stem}.mp4")],
                           input=frames.tobytes(), check=True)  # fmt: skip
            said = TRANSCRIPT.get(stem, text)
            if kind == "srt":
                body = f"1\n{_seconds(0.6).replace('.', ',')} --> {_seconds(dur - 0.6).replace('.', ',')}\n{said}\n"
            elif kind == "vtt":
                body = f"WEBVTT\n\n{_seconds(0.6)} --> {_seconds(dur - 0.6)}\n{said}\n"
            else:
                body = said + "\n"
            (HERE / f"{stem}.{kind}").write_text(body, encoding="utf-8")
            meta.append({"file_name": f"{stem}.mp4", "language": lang, "speaker": "a presenter in a studio",
                         "caption": "A presenter speaks to the camera in front of a plain "
                                    f"{WALLS[len(meta)]} wall."})  # fmt: skip
    meta[0]["trigger"] = "hhsample"
    (HERE / "metadata.jsonl").write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta),
                                         encoding="utf-8")


if __name__ == "__main__":
    main()
