"""``python -m data_prep``: build a training dataset from a footage folder.

    python -m data_prep build FOOTAGE_DIR --out DATASET_DIR [--config data.yaml] [--encode] [--rebuild]
    python -m data_prep probe FILE...                 # stage 1: what is in a file
    python -m data_prep g2p LANGUAGE "text"           # stage 3: words and phonemes
    python -m data_prep prepare FOOTAGE_DIR --out DATASET_DIR   # stages 1-7 only (cached in DATASET_DIR/.work)
    python -m data_prep encode FOOTAGE_DIR --out DATASET_DIR    # stage 8 + write (reuses stages 1-7)
    python -m data_prep report DATASET_DIR            # rewrite report.html / report.json from the cache

Re-running a build resumes: finished files and encoded clips are not redone.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def _config(args):
    from .config import load_data_config

    overrides = {"workers": getattr(args, "workers", None), "language": getattr(args, "language", None)}
    if getattr(args, "tiny_encoders", False):
        overrides["tiny_encoders"] = True
    return load_data_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("build", "all stages"), ("prepare", "stages 1-7"), ("encode", "stages 8-9 (after prepare)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("footage", type=Path)
        p.add_argument("--out", type=Path, required=True, help="DATASET_DIR")
        p.add_argument("--config", type=Path, help="data config YAML")
        p.add_argument("--workers", type=int, help="parallel worker processes for stages 1-7")
        p.add_argument("--language", help="default language when metadata names none")
        p.add_argument("--rebuild", action="store_true", help="discard the cache in DATASET_DIR/.work")
        p.add_argument("--no-progress", action="store_true")
        if name == "build":
            p.add_argument("--encode", action="store_true", help="also compute latents (stage 8)")
        if name != "prepare":
            p.add_argument("--tiny-encoders", action="store_true", help="random tiny encoders (quick start, tests)")
    p = sub.add_parser("probe", help="stage 1 on single files")
    p.add_argument("files", nargs="+", type=Path)
    p = sub.add_parser("g2p", help="stage 3 on a text")
    p.add_argument("language")
    p.add_argument("text")
    p = sub.add_parser("report", help="rewrite the report from DATASET_DIR/.work")
    p.add_argument("dataset", type=Path)
    args = parser.parse_args(argv)

    from .build import BuildError, build, prepare_all

    try:
        if args.command == "probe":
            from .media import MediaError, probe

            for f in args.files:
                try:
                    print(json.dumps({"file": str(f), **asdict(probe(f))}))
                except (MediaError, OSError) as e:
                    print(json.dumps({"file": str(f), "error": str(e)}))
            return 0
        if args.command == "g2p":
            from .g2p import phonemize
            from .languages import normalise_language

            for w in phonemize(args.text, normalise_language(args.language)):
                print(f"{w.word}\t{' '.join(w.phonemes)}" + (f"\t[{' '.join(w.ipa)}]" if w.ipa else ""))
            return 0
        if args.command == "report":
            from .report import write_report

            units = [json.loads(p.read_text()) for p in sorted((args.dataset / ".work" / "units").glob("*.json"))]
            print(json.dumps(write_report(units, args.dataset)["totals"]))
            return 0
        cfg = _config(args)
        if args.command == "prepare":
            units = prepare_all(args.footage, args.out, cfg, rebuild=args.rebuild, progress=not args.no_progress)
            print(f"{sum(len(u['clips']) for u in units)} clips from {len(units)} files (cached in {args.out}/.work)")
            return 0
        out = build(args.footage, args.out, cfg, encode=args.command == "encode" or args.encode, rebuild=args.rebuild,
                    progress=not args.no_progress)  # fmt: skip
        totals = json.loads((out / "report.json").read_text())["totals"]
        print(f"dataset: {out}/dataset  report: {out}/report.html  {json.dumps(totals)}")
        return 0
    except (BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
