"""Adapters as standalone files: PEFT, ComfyUI/FastVideo, kohya, and merged checkpoints.

``export_adapter(source, fmt, out, ...)`` takes a PEFT-wrapped model, an adapter file or
folder in any supported format, or a training run folder. Converting between formats
is exporting an imported adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .formats import (AdapterError, AdapterMetadata, LoraWeights, from_peft_model, read_adapter, write_comfyui,
                      write_kohya, write_peft)  # fmt: skip
from .merge import merge_into_checkpoint

FORMATS = ("peft", "comfyui", "kohya", "merged", "merged_single", "merged_fp8")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def as_weights(source, metadata: AdapterMetadata | dict | None = None) -> LoraWeights:
    """An adapter from a PEFT model, a path (any format, or a RUN_DIR with run_info.json), with metadata merged in."""
    if isinstance(source, torch.nn.Module):
        w = from_peft_model(source)
        from ..fingerprint import base_fingerprint

        w.metadata.base_fingerprint = base_fingerprint(source)
    else:
        w = read_adapter(source)
        info = Path(source) / "run_info.json"
        if info.is_file():
            run = json.loads(info.read_text())
            w.metadata = w.metadata.model_copy(update={
                "base_fingerprint": run.get("base_fingerprint"), "training_steps": run.get("steps"),
                "recipe_hash": run.get("recipe_hash"), "trigger_words": run.get("trigger_words", []),
                "languages": run.get("languages", []), "dataset_summary": run.get("dataset_summary", {})})  # fmt: skip
    if metadata:
        extra = metadata.model_dump(exclude_unset=True) if isinstance(metadata, AdapterMetadata) else dict(metadata)
        w.metadata = AdapterMetadata.model_validate({**w.metadata.model_dump(), **extra})  # unknown keys fail by name
    return w


def export_adapter(source, fmt: str, out: str | Path, *, base: str | Path | None = None, strength: float = 1.0,
                   dtype: str = "bf16", metadata: AdapterMetadata | dict | None = None,
                   extra: list[tuple[object, float]] | None = None) -> Path:  # fmt: skip
    """Write ``source`` as ``fmt`` at ``out``; merged formats need ``base`` and may merge ``extra`` adapters too."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
    w = as_weights(source, metadata)
    out = Path(out)
    if fmt == "peft":
        return write_peft(w, out, _DTYPES[dtype])
    if fmt in ("comfyui", "kohya"):
        path = out if out.suffix == ".safetensors" else out / f"adapter_{fmt}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        return (write_comfyui if fmt == "comfyui" else write_kohya)(w, path, _DTYPES[dtype])
    if base is None:
        raise ValueError(f"format {fmt!r} merges into a base checkpoint: pass base=BASE_DIR (--base)")
    adapters = [(w, strength)] + [(as_weights(s), st) for s, st in (extra or [])]
    header = {"hhtune": w.described().model_dump_json(), "hhtune_adapter_format": fmt,
              "hhtune_merge_strengths": json.dumps([s for _, s in adapters])}  # fmt: skip
    if fmt == "merged":
        return merge_into_checkpoint(base, adapters, out, metadata=header)
    path = out if out.suffix == ".safetensors" else out / f"model_{fmt.removeprefix('merged_')}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    return merge_into_checkpoint(base, adapters, path, single_file=True, dtype="bf16" if fmt == "merged_single" else "fp8",
                                 metadata=header)  # fmt: skip


__all__ = ["AdapterError", "AdapterMetadata", "FORMATS", "LoraWeights", "export_adapter", "read_adapter"]
