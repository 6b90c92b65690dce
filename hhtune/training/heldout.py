"""``validation.prompts: auto``: validation asks for what the dataset's captions taught, on clips never trained on.

``validation.auto_clips`` clips are chosen from the dataset (spoken clips first, one language after another so a
multilingual dataset is validated in each; within a language in an order fixed by ``validation.seed``), their
captions become the validation prompts, and their rows are held out: no epoch draws them. The choice depends only on
the dataset and the recipe, so a resumed run holds out the same clips; ``recipe.yaml`` of the run lists the prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..recipe import Recipe
from .data import TrainingDataset
from .errors import TrainingError


def held_out_rows(clip_ids: list[str], languages: list[str], transcripts: list[str], n: int, seed: int) -> list[int]:
    """``n`` row indices: spoken clips before silent ones, languages in turn, a seeded hash order within each."""
    order = lambda i: (not transcripts[i].strip(), hashlib.sha1(f"{seed}:{clip_ids[i]}".encode()).hexdigest())
    by_language: dict[str, list[int]] = {}
    for i in sorted(range(len(clip_ids)), key=order):
        by_language.setdefault(languages[i], []).append(i)
    queues = sorted(by_language.values(), key=lambda rows: order(rows[0]))
    picked: list[int] = []
    while len(picked) < n and any(queues):
        for rows in queues:
            if rows and len(picked) < n:
                picked.append(rows.pop(0))
    return picked


def hold_out_validation_clips(recipe: Recipe, data: TrainingDataset, log: Callable[[str], None]) -> Recipe:
    """The recipe with ``validation.prompts: auto`` replaced by held-out captions (``data`` stops drawing those
    clips); any other recipe unchanged."""
    v = recipe.validation
    if v.prompts != "auto":
        return recipe
    if len(data) <= v.auto_clips:
        raise TrainingError(f"validation.prompts: auto holds out {v.auto_clips} clip(s), but the dataset has only "
                            f"{len(data)}: lower validation.auto_clips or write the prompts out")  # fmt: skip
    cols = data.ds.select_columns(["clip_id", "language", "transcript", "caption"])
    rows = held_out_rows(cols["clip_id"], cols["language"], cols["transcript"], v.auto_clips, v.seed)
    data.hold_out(rows)
    log(f"validation.prompts: auto: held out {len(rows)} clip(s) for their captions: "
        f"{', '.join(cols['clip_id'][r] for r in rows)}")
    prompts = [cols["caption"][r] for r in rows]
    return recipe.model_copy(update={"validation": v.model_copy(update={"prompts": prompts})})


__all__ = ["held_out_rows", "hold_out_validation_clips"]
