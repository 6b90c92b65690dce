"""The one-page HTML report a producer reads: ``RUN_DIR/eval/report.html`` beside ``eval.json``.

Rendered with Jinja2 with autoescaping on for every template (captions hold ``<a presenter,
German>`` tags, which must show as text). Every video, image and link is a path relative to the
report, so the folder can be copied or served as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..io import atomic_write_text

TEMPLATE = "eval_report.html.j2"
_TEMPLATES = Path(__file__).with_name("templates")


def _relative(path: str | Path | None, start: Path) -> str | None:
    return None if path is None else Path(os.path.relpath(Path(path), start)).as_posix()


def report_context(result: dict, out_dir: Path) -> dict:
    """What the template shows, from ``eval.json``'s content: grids, curves, recommendation, metric notes."""
    variants = ["base", *[c["label"] for c in result["checkpoints"]]]
    grid = []
    for i, prompt in enumerate(result["prompts"]):
        rows = []
        for seed in result["seeds"]:
            cells = []
            for v in variants:
                mp4 = next((s["mp4"] for s in result["samples"] if s["variant"] == v and s["prompt"] == i
                            and s["seed"] == seed), None)  # fmt: skip
                cells.append({"variant": v, "src": _relative(Path(result["eval_dir"]) / mp4, out_dir) if mp4 else None})
            rows.append({"seed": seed, "cells": cells})
        grid.append({"prompt": prompt, "rows": rows})
    curves = [{"metric": k, "src": _relative(Path(result["eval_dir"]) / p, out_dir)}
              for k, p in sorted(result["curves"].items())]
    return {"run_dir": result["run_dir"], "variants": variants, "grid": grid, "curves": curves,
            "recommendation": result["recommendation"], "transfer": result.get("transfer"),
            "metrics": result["metrics"], "drift": result.get("drift", {}), "descriptions": result["descriptions"],
            "not_measured": result["not_measured"], "strengths": result["strengths"],
            "super_resolution": result.get("super_resolution")}  # fmt: skip


def write_report(result: dict, out_dir: Path) -> Path:
    """Render ``out_dir/report.html`` from ``result`` (the content of ``eval.json``)."""
    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=True, undefined=StrictUndefined)
    html = env.get_template(TEMPLATE).render(**report_context(result, out_dir))
    path = out_dir / "report.html"
    atomic_write_text(path, html)
    return path
