"""data_prep stages 1-7 against a bare single-threaded ffmpeg decode of the same footage, side by side.

Footage: a test-pattern picture at 720p and 1080p (H.264, 25 fps) over several espeak-ng English sentences with
pauses and an exact per-sentence SRT, ``--seconds`` long. For each file, in one run:

* ``ffmpeg -threads 1 -i X -f null -``: decoding picture and sound, nothing else (the floor);
* stages 1-7 of one file (``prepare_file``: probe, decode, transcript, G2P, DTW alignment, VAD, cutting, frames
  into the bucket, captions, clip files) in this process, after a warm-up file, so imports and numba compilation
  (paid once per worker process) are left out; reported separately as ``worker start-up``;
* the whole ``prepare_all`` over both files with 2 worker processes (start-up included).

    python benchmarks/data_prep_throughput.py [--seconds 16] [--base-resolution 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = ["Good morning and welcome to our studio.", "Today we look at the new spring collection.",
             "Every piece is made by hand in a small workshop near the sea.",
             "It takes about three days to finish one.",
             "The colours are bright and the fabrics are light.",
             "Thank you for watching, and see you next week."]  # fmt: skip


def make_footage(folder: Path, name: str, size: str, seconds: float) -> Path:
    """An H.264 file of ``size`` with espeak-ng speech and a per-sentence SRT, about ``seconds`` long."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data_prep"))
    from _dp_footage import long_speech_footage  # noqa: PLC0415 -- test helper, importable only after the sys.path insert above

    sentences, pauses, total = [], [], 0.0
    while total < seconds - 3:
        sentences.append(SENTENCES[len(sentences) % len(SENTENCES)])
        pauses.append(0.4 + 0.3 * (len(sentences) % 3))
        total += 2.8 + pauses[-1]
    mp4, _ = long_speech_footage(folder, name, "en", "en-us", sentences, pauses=pauses, size=size)
    # re-encode the picture at a realistic bitrate (the helper's ultrafast preset decodes unusually fast)
    out = folder / f"{name}.x.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-c:v", "libx264", "-preset", "medium", "-crf", "20",
                    "-c:a", "copy", str(out)], check=True)  # fmt: skip
    out.replace(mp4)
    return mp4


def ffmpeg_decode(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(path), "-f", "null", "-"],
                   check=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument("--base-resolution", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from data_prep.build import prepare_all  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from data_prep.config import DataConfig  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from data_prep.prepare import prepare_file  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    cfg = DataConfig(base_resolution=args.base_resolution, workers=2, language="en")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        footage = root / "footage"
        footage.mkdir()
        warm = make_footage(root, "warmup", "320x180", 6.0)
        files = {"720p": make_footage(footage, "talk_720p", "1280x720", args.seconds),
                 "1080p": make_footage(footage, "talk_1080p", "1920x1080", args.seconds)}  # fmt: skip
        work = root / "work"
        (work / "units").mkdir(parents=True)
        (work / "clips").mkdir()
        t = time.perf_counter()
        prepare_file(warm, warm.name, {}, cfg, work)  # imports, numba, Silero and G2P dictionaries: once per worker
        startup = time.perf_counter() - t
        print(f"worker start-up (first file, 6 s at 320x180): {startup:.1f} s")
        print(f"{'file':6} {'footage s':>9} {'ffmpeg -threads 1':>18} {'stages 1-7':>11} {'ratio':>6} {'clips':>6} "
              f"{'speech kept':>12}")
        for name, path in files.items():
            decode = min(ffmpeg_decode(path) for _ in range(2))
            t = time.perf_counter()
            unit = prepare_file(path, path.name, {}, cfg, work)
            ours = time.perf_counter() - t
            cov = unit.speech_coverage or {}
            kept = cov.get("transcribed_used_s", 0) / max(1e-9, cov.get("transcribed_s", 0))
            row = {"file": name, "footage_s": round(unit.duration, 2), "ffmpeg_s": round(decode, 2),
                   "stages_1_7_s": round(ours, 2), "ratio": round(ours / decode, 2), "clips": len(unit.clips),
                   "speech_kept": round(kept, 3)}  # fmt: skip
            results.append(row)
            print(f"{name:6} {row['footage_s']:9.1f} {decode:18.2f} {ours:11.2f} {row['ratio']:6.2f} {row['clips']:6d} "
                  f"{kept:12.1%}")
        decodes = sum(r["ffmpeg_s"] for r in results)
        t = time.perf_counter()
        prepare_all(footage, root / "out", cfg, progress=False)
        wall = time.perf_counter() - t
        print(f"prepare_all, 2 workers, both files (start-up included): {wall:.1f} s = {wall / decodes:.2f}x the two "
              f"single-threaded decodes ({decodes:.1f} s)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"startup_s": round(startup, 2), "files": results, "prepare_all_2_workers_s":
                                         round(wall, 2)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
