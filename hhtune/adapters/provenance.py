"""What a training run recorded about its adapter, read into the adapter's metadata.

A run writes its adapter as a PEFT folder (``RUN_DIR/adapter``) and its checkpoints
(``RUN_DIR/checkpoints/step-N``) without headers; what it knows about them (the base model's
fingerprint, steps, trigger words, data) is in ``RUN_DIR/run_info.json``. :func:`read_run_adapter`
reads an adapter from any of those paths with that record in its metadata, so the base check of
:func:`hhtune.adapters.apply.check_same_base` holds for a run's adapter however it is named.
"""

from __future__ import annotations

import json
from pathlib import Path

from .formats.checkpoint import is_checkpoint
from .formats.read import read_adapter
from .formats.weights import AdapterMetadata, LoraWeights

RUN_INFO = "run_info.json"
#: ``run_info.json`` key -> :class:`AdapterMetadata` field
RUN_INFO_FIELDS = {"base_fingerprint": "base_fingerprint", "steps": "training_steps", "recipe_hash": "recipe_hash",
                   "trigger_words": "trigger_words", "languages": "languages", "dataset_summary": "dataset_summary",
                   "base": "base_name", "variant": "variant"}  # fmt: skip


def run_info_path(path: str | Path) -> Path | None:
    """The ``run_info.json`` of the run that ``path`` (RUN_DIR, RUN_DIR/adapter, a checkpoint) belongs to, if any."""
    path = Path(path)
    checkpoint = is_checkpoint(path)
    candidates = [path.parent.parent / RUN_INFO] if checkpoint else [path / RUN_INFO, path.parent / RUN_INFO]
    if not checkpoint and path.name != "adapter":
        candidates = candidates[:1]  # a PEFT folder elsewhere is not part of a run
    return next((c for c in candidates if c.is_file()), None)


def read_run_adapter(path: str | Path) -> LoraWeights:
    """:func:`~hhtune.adapters.formats.read.read_adapter`, with the run's ``run_info.json`` over the file's header.

    A checkpoint keeps its own step count (the run's record is about its end).
    """
    w = read_adapter(path)
    info_file = run_info_path(path)
    if info_file is None:
        return w
    run = json.loads(info_file.read_text())
    update = {field: run[key] for key, field in RUN_INFO_FIELDS.items() if run.get(key) is not None}
    if is_checkpoint(path):
        update.pop("training_steps", None)
    if "base_name" in update:
        update["base_name"] = str(update["base_name"])
    w.metadata = AdapterMetadata.model_validate({**w.metadata.model_dump(), **update})
    return w
