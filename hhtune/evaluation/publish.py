"""The evaluation's result carried to the adapter: its model card and the ``recommended_strength`` in file headers.

Only adapter files are rewritten (``RUN_DIR/adapter`` and the non-merged exports under
``RUN_DIR/export``): merged checkpoints are whole models, too large to rewrite for one number.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from ..adapters.formats.modelspec import usage_hint
from ..adapters.formats.weights import METADATA_KEY, AdapterMetadata
from ..export.model_card import write_model_card
from ..io import atomic_save_file, atomic_write_text


def adapter_files(run_dir: Path) -> list[Path]:
    """The adapter safetensors files of a run that carry hhtune metadata (final adapter and non-merged exports)."""
    candidates = list((run_dir / "adapter").glob("*.safetensors"))
    export = run_dir / "export"
    if export.is_dir():
        candidates += [p for p in export.rglob("*.safetensors")
                       if not p.relative_to(export).parts[0].startswith("merged")]
    out = []
    for p in sorted(candidates):
        with safe_open(p, framework="pt") as f:
            if METADATA_KEY in (f.metadata() or {}):
                out.append(p)
    return out


def set_recommended_strength(path: Path, strength: float | None) -> None:
    """Rewrite ``path``'s header with ``recommended_strength`` (and ModelSpec's usage hint); tensors unchanged."""
    with safe_open(path, framework="pt") as f:
        header = dict(f.metadata() or {})
    meta = AdapterMetadata.model_validate_json(header[METADATA_KEY])
    meta.recommended_strength = strength
    header[METADATA_KEY] = meta.model_dump_json()
    if strength is not None:
        header["modelspec.usage_hint"] = usage_hint(strength)
    atomic_save_file(load_file(path), path, header)


def publish(run_dir: Path, evaluation: dict) -> list[Path]:
    """Record ``evaluation`` (recommended_strength, recommended_checkpoint, report) in run_info.json, the final
    adapter's model card and every adapter file's header; returns the files changed."""
    changed = []
    info_file = run_dir / "run_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["evaluation"] = evaluation
    if info_file.is_file():
        atomic_write_text(info_file, json.dumps(info, indent=2))
        changed.append(info_file)
    if (run_dir / "adapter").is_dir():
        recipe = run_dir / "recipe.yaml"
        if recipe.is_file() and "lora" not in info:
            info["lora"] = (yaml.safe_load(recipe.read_text()) or {}).get("lora")
        changed.append(write_model_card(run_dir / "adapter", info))
    for path in adapter_files(run_dir):
        set_recommended_strength(path, evaluation.get("recommended_strength"))
        changed.append(path)
    return changed
