"""Run fingerprints: a checkpoint resumes only the run that wrote it.

Every checkpoint stores the keys that decide what the run computes: the recipe (less the
keys below), the process count and the dataset's fingerprint. Resuming with any of them
changed would silently shift the data order or change the objective, so it is refused
with the list of changes, unless the recipe names them in ``checkpointing.allow_changed``.
Keys that give the adapter or its optimizer state other tensors (:data:`SHAPE_KEYS`) cannot
be resumed at all: the checkpoint's tensors do not fit the new run, so ``allow_changed`` does
not accept them and the refusal names the alternative, a new run.
"""

from __future__ import annotations

import json
from typing import Any

from ..recipe import Recipe

#: Keys (or sections, as a prefix) that never count: they change how long the run is, what it
#: logs, samples, keeps or exports, or where it lives, but not the optimizer steps it takes.
FREE_KEYS: tuple[str, ...] = ("train.max_steps", "train.output_dir", "data.num_workers", "logging", "validation",
                              "checkpointing", "export")  # fmt: skip
#: Keys (or sections) whose change gives the adapter or its optimizer state other tensors (another rank, other
#: adapted modules, DoRA magnitudes, another architecture, 8-bit optimizer state): never resumable.
SHAPE_KEYS: tuple[str, ...] = ("model.preset", "lora.rank", "lora.targets", "lora.layers", "lora.experts",
                               "lora.embedders", "lora.use_dora", "optimizer.eight_bit")  # fmt: skip
WORLD_SIZE = "world_size"
DATASET = "dataset.fingerprint"


class ResumeMismatch(ValueError):  # noqa: N818 -- public name; the base class says error
    """The checkpoint was written by a run with different settings; the message lists them (bad input, exit 2)."""


def run_fingerprint(recipe: Recipe, world_size: int, dataset_fingerprint: str | None) -> dict[str, Any]:
    """The training-relevant settings of a run, as flat ``dotted key -> JSON value``."""
    flat = _flatten(recipe.model_dump(mode="json"))
    out = {k: v for k, v in flat.items() if not _free(k)}
    out[WORLD_SIZE] = world_size
    out[DATASET] = dataset_fingerprint
    return out


def check_resume(stored: dict[str, Any], current: dict[str, Any],
                 allow_changed: list[str], checkpoint: str) -> list[str]:
    """Raise :class:`ResumeMismatch` if ``stored`` and ``current`` differ outside ``allow_changed``.

    Returns the allowed changes (``"key: old -> new"``) so the caller can log them.
    """
    unknown = [k for k in allow_changed if not any(_covers(k, key) for key in {*stored, *current})]
    if unknown:
        raise ResumeMismatch(
            f"checkpointing.allow_changed names {unknown}, which are not fingerprinted keys; "
            f"use dotted recipe keys (e.g. optimizer.lr), a section (e.g. loss), {WORLD_SIZE!r} or {DATASET!r}"
        )
    changes, allowed, reshaped = [], [], []
    for key in sorted({*stored, *current}):
        if _free(key):
            continue  # fingerprints written by another hhtune may hold keys that no longer count
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if old == new or (key not in stored and _is_default(key, new)):
            continue  # a setting added by a later hhtune, left at its default, trains the same run
        line = f"{key}: {json.dumps(old)} -> {json.dumps(new)}"
        if any(_covers(shape, key) for shape in SHAPE_KEYS):
            reshaped.append(line)
        else:
            (allowed if any(_covers(a, key) for a in allow_changed) else changes).append(line)
    if reshaped:
        raise ResumeMismatch(
            f"refusing to resume from {checkpoint}: these settings give the adapter other tensors, so no checkpoint "
            "of this run can continue with them (checkpointing.allow_changed cannot accept them):\n  "
            + "\n  ".join(reshaped + changes) + "\n"
            "Restore them to resume, or train the new settings as a new run in another train.output_dir; this run's "
            f"checkpoints stay usable as adapters (python -m hhtune.export {checkpoint} --format FORMAT --out PATH)."
        )
    if changes:
        raise ResumeMismatch(
            f"refusing to resume from {checkpoint}: it was written by a run with different settings, and resuming "
            f"would change the data order or the objective mid-run:\n  " + "\n  ".join(changes) + "\n"
            "Restore those settings, start a new run (another train.output_dir, or checkpointing.resume=false), "
            "or, if the change is deliberate, list the keys in checkpointing.allow_changed "
            f"(e.g. checkpointing.allow_changed=[{changes[0].split(':')[0]}])."
        )
    return allowed


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _covers(pattern: str, key: str) -> bool:
    return key == pattern or key.startswith(pattern + ".")


def _is_default(key: str, value: Any) -> bool:
    """Whether ``value`` (a fingerprint's JSON value) is the recipe's default for the dotted ``key``; ``False``
    where the key names no recipe setting with a default."""
    section: Any = Recipe
    *path, name = key.split(".")
    for part in path:
        field = getattr(section, "model_fields", {}).get(part)
        section = field.annotation if field is not None else None
    field = getattr(section, "model_fields", {}).get(name)
    if field is None or field.is_required():
        return False
    return json.loads(json.dumps(field.get_default(call_default_factory=True), default=str)) == value


def _free(key: str) -> bool:
    return any(_covers(f, key) for f in FREE_KEYS)
