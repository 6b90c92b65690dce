"""How well a dataset's captions follow the official prompt format (daVinci-MagiHuman ``enhanced_prompt_design.md``).

    python benchmarks/caption_format.py DATASET_DIR [--trigger WORD] [--json]

Per clip (the checks of :func:`data_prep.caption_format.check_caption`): the three parts present, a language tag per
Dialogue line, CJK characters spaced, every Dialogue line equal to the clip's transcript, the trigger word once
(``--trigger``, default the dataset's configured ``trigger``); the description's length (150-200 words) is a
warning. Prints one line per clip with a problem and a summary; exits 1 when any clip breaks the format.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_prep.caption_format import check_caption
from hhtune.dataset import open_dataset_dir


def check_dataset(path: Path, trigger: str | None = None) -> dict:
    """Every clip's result and the counts: ``{"clips", "ok", "warned", "failed", "results": [...]}``."""
    opened = open_dataset_dir(path)
    if trigger is None:
        trigger = (opened.manifest.get("settings") or {}).get("trigger")
    results = []
    for row in opened.dataset.select_columns(["clip_id", "caption", "transcript"]):
        r = check_caption(row["caption"], transcript=row["transcript"], trigger=trigger)
        results.append({"clip_id": row["clip_id"], "ok": r.ok, "problems": r.problems, "warnings": r.warnings,
                        "description_words": r.words})  # fmt: skip
    return {"clips": len(results), "ok": sum(r["ok"] for r in results),
            "warned": sum(bool(r["warnings"]) for r in results), "failed": sum(not r["ok"] for r in results),
            "trigger": trigger, "results": results}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--trigger", help="trigger word expected once per caption (default: the dataset's)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    out = check_dataset(args.dataset, args.trigger)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for r in out["results"]:
            if r["problems"]:
                print(f"{r['clip_id']}: {'; '.join(r['problems'])}")
        print(f"{out['ok']}/{out['clips']} captions in the official format ({out['failed']} not; "
              f"{out['warned']} with a description outside 150-200 words)")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
