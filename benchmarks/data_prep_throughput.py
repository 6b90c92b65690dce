"""data_prep stages 1-7: seconds of footage processed per wall second per core, 1 worker vs N.

Runs `prepare_all` on the shipped sample footage (copied several times) in a fresh
cache for each worker count, side by side in one run. "Per core" divides by the
number of workers (each worker process is single-threaded for decoding and G2P).
Worker start-up (imports of torch, G2P dictionaries) is included: it is part of a build.

    python benchmarks/data_prep_throughput.py [--copies 3] [--workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from data_prep.build import prepare_all
from data_prep.config import load_data_config

SAMPLE = Path(__file__).resolve().parents[1] / "data_prep" / "sample_footage"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        footage = Path(tmp) / "footage"
        footage.mkdir()
        meta = []
        for line in (SAMPLE / "metadata.jsonl").read_text().splitlines():
            row = json.loads(line)
            for c in range(args.copies):
                stem = Path(row["file_name"]).stem + f"_{c}"
                for f in SAMPLE.glob(Path(row["file_name"]).stem + ".*"):
                    shutil.copy(f, footage / (stem + f.suffix))
                meta.append({**row, "file_name": stem + ".mp4"})
        (footage / "metadata.jsonl").write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta))
        seconds = sum(float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                            str(f)], capture_output=True, text=True).stdout) for f in footage.glob("*.mp4"))  # fmt: skip
        print(f"{len(meta)} files, {seconds:.1f} s of footage, {os.cpu_count()} CPUs visible")
        print(f"{'workers':>7} {'footage s / wall s':>19} {'per core':>9}")
        for w in args.workers:
            cfg = load_data_config(None, {"workers": w, "base_resolution": 256})
            t = time.perf_counter()
            prepare_all(footage, Path(tmp) / f"out{w}", cfg, progress=False)
            wall = time.perf_counter() - t
            rate = seconds / wall
            results.append({"workers": w, "wall_s": round(wall, 2), "footage_s_per_s": round(rate, 3),
                            "per_core": round(rate / w, 3)})  # fmt: skip
            print(f"{w:7d} {rate:19.2f} {rate / w:9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"footage_s": round(seconds, 2), "results": results}, indent=2))


if __name__ == "__main__":
    main()
