"""``python -m data_prep``: build a training dataset from a footage folder, or run one stage.

    python -m data_prep build FOOTAGE_DIR --out DATASET_DIR [--config data.yaml] [--encode] [--tiny-encoders]
    python -m data_prep prepare FOOTAGE_DIR --out DATASET_DIR [--redo FILE ...]  # stages 1-7 (cached in .work)
    python -m data_prep encode FOOTAGE_DIR --out DATASET_DIR [--reencode]        # stages 8-9 (reuses 1-7)
    python -m data_prep report DATASET_DIR                # rewrite report.html / report.json from the cache
    python -m data_prep check DATASET_DIR                 # trainable? exit 0, else 2 with why and the fix
    python -m data_prep captions DATASET_DIR --export captions.csv   # review: every clip's caption, to edit
    python -m data_prep captions DATASET_DIR --import captions.csv   # the edits back (text features re-encoded)
    python -m data_prep probe FILE...                     # stage 1: streams, duration, fps, rotation
    python -m data_prep transcript FILE                   # stage 2: a sidecar as parsed
    python -m data_prep g2p LANGUAGE "text"               # stage 3: words and phonemes
    python -m data_prep align FILE --language L [--transcript T] [--out DIR]   # stages 3-4 as a build: JSON + TextGrid

Re-running a build resumes: finished files and encoded clips are not redone.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from hhtune.cli import run_command
from hhtune.media import MediaError, decode_audio, probe
from hhtune.quiet import quiet_dependencies
from hhtune.speech.g2p import phonemize
from hhtune.speech.languages import normalise_language


def _config(args):
    from .config import load_data_config  # noqa: PLC0415 -- pydantic loads only for the `config` subcommand

    overrides = {"workers": getattr(args, "workers", None), "language": getattr(args, "language", None)}
    if getattr(args, "tiny_encoders", False):
        overrides["tiny_encoders"] = True
    return load_data_config(args.config, overrides)


def _parser() -> argparse.ArgumentParser:
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
        if name == "prepare":
            p.add_argument("--redo", nargs="+", default=[], metavar="FILE", help="files (relative) to do again")
        if name == "build":
            p.add_argument("--encode", action="store_true", help="also compute latents (stage 8)")
        if name != "prepare":
            p.add_argument("--tiny-encoders", action="store_true", help="random tiny encoders (quick start, tests)")
            p.add_argument("--reencode", action="store_true",
                           help="drop latents made by other encoders and encode again")
    p = sub.add_parser("probe", help="stage 1 on single files")
    p.add_argument("files", nargs="+", type=Path)
    p = sub.add_parser("transcript", help="stage 2: parse a transcript sidecar")
    p.add_argument("file", type=Path)
    p = sub.add_parser("g2p", help="stage 3 on a text")
    p.add_argument("language")
    p.add_argument("text")
    p = sub.add_parser("align", help="stage 4 on one file: word/phoneme intervals as JSON and TextGrid")
    p.add_argument("file", type=Path)
    p.add_argument("--language", required=True)
    p.add_argument("--transcript", type=Path, help="sidecar (default: FILE's .srt/.vtt/.txt)")
    p.add_argument("--acoustic-model", type=Path)
    p.add_argument("--out", type=Path, help="folder for STEM.alignment.json and STEM.TextGrid (default: print JSON)")
    p = sub.add_parser("report", help="rewrite the report from DATASET_DIR/.work")
    p.add_argument("dataset", type=Path)
    p = sub.add_parser("check", help="whether training can use DATASET_DIR (exit 0), or why not (exit 2)")
    p.add_argument("dataset", type=Path)
    p = sub.add_parser("captions", help="export captions to a CSV for review, or import the edited CSV")
    p.add_argument("dataset", type=Path)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--export", type=Path, metavar="CSV", help="write one row per clip")
    way.add_argument("--import", dest="import_", type=Path, metavar="CSV", help="apply the edited captions")
    return parser


def _align_one(args) -> int:
    """Stages 2-4 on one file through the build's own functions: the same audio decode, language check and
    alignment (cue padding, neighbour bounds, too-long check), so the words are those a build cuts clips from."""
    from .alignment import align_transcript, check_language  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant
    from .language import Detected  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant
    from .textgrid import write_textgrid  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant
    from .transcripts import find_sidecar, parse_transcript  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

    side = args.transcript or find_sidecar(args.file)
    if side is None:
        raise ValueError(f"no transcript for {args.file}: pass --transcript")
    info = probe(args.file)
    mono16k = decode_audio(args.file).mono16k
    transcript = parse_transcript(side)
    notes: list[str] = []
    language = check_language(transcript.text(), Detected(normalise_language(args.language), 1.0, "flag"), mono16k,
                              notes).language
    result = align_transcript(mono16k, transcript, language, info.duration, args.acoustic_model, notes).alignment
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.file.stem}.alignment.json").write_text(result.to_json(), encoding="utf-8")
        write_textgrid(result, info.duration, args.out / f"{args.file.stem}.TextGrid")
        print(f"{args.out / args.file.stem}.alignment.json, .TextGrid ({result.method}, {len(result.words)} words)")
    else:
        print(result.to_json())
    return 0


def _check(path: Path) -> int:
    """Whether training can read ``path``: exit 0 and ``trainable``, or an ``error:`` line saying why not and how to
    fix it (exit 2). The format is checked as the reader checks it; a dataset without latents is well formed but
    not trainable."""
    from hhtune.dataset import DatasetError  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

    from .dataset import load_dataset_dir  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

    d = load_dataset_dir(path)
    if not d.encoded:
        raise DatasetError(f"{path} is not trainable: it has no latents (built without --encode); run "
                           f"`python -m data_prep encode FOOTAGE_DIR --out {path}` "
                           "(reuses the cached clips)")  # fmt: skip
    print(f"{path}: trainable: {len(d.dataset)} clips with latents, fingerprint {d.manifest['fingerprint']}")
    return 0


def _captions(args) -> int:
    """The review loop (:mod:`data_prep.review`): export the captions, or import the edited CSV."""
    from .review import export_captions, import_captions  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

    if args.export is not None:
        print(f"{args.export}: {export_captions(args.dataset, args.export)} clips; edit caption and transcript, then "
              f"`python -m data_prep captions {args.dataset} --import {args.export}`")
        return 0
    edits = import_captions(args.dataset, args.import_)
    print(f"{args.dataset}: {len(edits)} clip(s) edited" + (f" ({', '.join(e.clip_id for e in edits)})" if edits else
                                                             ", the CSV matches the dataset"))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli` (2 bad input, 3 a missing tool or package)."""
    quiet_dependencies()
    return run_command(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from .build import build, load_units, prepare_all  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

    if args.command == "probe":
        for f in args.files:
            try:
                print(json.dumps({"file": str(f), **asdict(probe(f))}))
            except (MediaError, OSError) as e:
                print(json.dumps({"file": str(f), "error": str(e)}))
        return 0
    if args.command == "transcript":
        from .transcripts import parse_transcript  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

        t = parse_transcript(args.file)
        print(json.dumps({"source": t.source, "segments": [asdict(s) for s in t.segments]}, ensure_ascii=False))
        return 0
    if args.command == "g2p":
        for w in phonemize(args.text, normalise_language(args.language)):
            print(f"{w.word}\t{' '.join(w.phonemes)}")
        return 0
    if args.command == "align":
        return _align_one(args)
    if args.command == "report":
        from .report import write_report  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

        print(json.dumps(write_report(load_units(args.dataset), args.dataset)["totals"]))
        return 0
    if args.command == "check":
        return _check(args.dataset)
    if args.command == "captions":
        return _captions(args)
    cfg = _config(args)
    if args.command == "prepare":
        units = prepare_all(args.footage, args.out, cfg, rebuild=args.rebuild, progress=not args.no_progress,
                            redo=args.redo)  # fmt: skip
        print(f"{sum(len(u.clips) for u in units)} clips from {len(units)} files (cached in {args.out}/.work)")
        return 0
    out = build(args.footage, args.out, cfg, encode=args.command == "encode" or args.encode, rebuild=args.rebuild,
                progress=not args.no_progress, reencode=args.reencode)  # fmt: skip
    if (out / "report.json").is_file():
        from .report import plural  # noqa: PLC0415 -- loads torch; --help and the light subcommands stay instant

        t = json.loads((out / "report.json").read_text())["totals"]
        print(f"dataset: {out}/dataset: {plural(t['clips'], 'clip')}, {t['seconds']} s, "
              f"from {plural(t['files'], 'file')} ({t['used']} used, {t['skipped']} skipped); "
              f"what happened to each file: {out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
