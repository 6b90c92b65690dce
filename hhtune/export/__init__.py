"""Adapters as standalone files: PEFT, ComfyUI/FastVideo, kohya, and merged checkpoints.

``export_adapter(source, fmt, out, ...)`` takes a PEFT-wrapped model, an adapter file or
folder in any supported format, or a training run folder. Converting between formats
is exporting an imported adapter.

| ``fmt`` | writes | dtype |
| --- | --- | --- |
| ``peft`` | folder ``adapter_config.json`` + ``adapter_model.safetensors`` | ``dtype`` |
| ``comfyui`` | one ``.safetensors``, ``diffusion_model.<path>.lora_A/lora_B/alpha`` | ``dtype`` |
| ``kohya`` | one ``.safetensors``, ``lora_unet_<path>.lora_down/lora_up/alpha`` | ``dtype`` |
| ``merged`` | official layout folder: shards + ``model.safetensors.index.json`` | official policy |
| ``merged_single`` | one ``.safetensors`` (what the ComfyUI MagiHuman nodes load) | ``dtype`` (bf16 default) |
| ``merged_fp8`` | one ``.safetensors``, block linears ``float8_e4m3fn`` + ``<key>.__fp8_scale`` | FP8 |
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .formats import AdapterError, AdapterMetadata, LoraWeights, from_peft_model, read_adapter, write_comfyui, write_kohya, write_peft
from .merge import merge_into_checkpoint

FORMATS = ("peft", "comfyui", "kohya", "merged", "merged_single", "merged_fp8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_FILE_NAMES = {"comfyui": "adapter_comfyui.safetensors", "kohya": "adapter_kohya.safetensors",
               "merged_single": "model_{dtype}.safetensors", "merged_fp8": "model_fp8.safetensors"}  # fmt: skip
_RUN_INFO_FIELDS = {"base_fingerprint": "base_fingerprint", "steps": "training_steps", "recipe_hash": "recipe_hash",
                    "trigger_words": "trigger_words", "languages": "languages", "dataset_summary": "dataset_summary",
                    "base": "base_name"}  # fmt: skip

AdapterSource = torch.nn.Module | str | Path | LoraWeights


def as_weights(source: AdapterSource, metadata: AdapterMetadata | dict | None = None,
               adapter_name: str | None = None) -> LoraWeights:  # fmt: skip
    """An adapter from a PEFT model, a path (any format, or a RUN_DIR with ``run_info.json``), metadata merged in.

    Precedence, lowest first: the file's own header, ``run_info.json``, then ``metadata``
    (whose unknown keys fail by name).
    """
    if isinstance(source, LoraWeights):
        w = LoraWeights(dict(source.modules), source.metadata.model_copy(), dict(source.magnitudes))
    elif isinstance(source, torch.nn.Module):
        from ..fingerprint import base_fingerprint

        w = from_peft_model(source, adapter_name)
        w.metadata.base_fingerprint = base_fingerprint(source)
    else:
        w = read_adapter(source)
        info = Path(source) / "run_info.json"
        if info.is_file():
            run = json.loads(info.read_text())
            update = {field: run[key] for key, field in _RUN_INFO_FIELDS.items() if run.get(key) is not None}
            if "base_name" in update:
                update["base_name"] = str(update["base_name"])
            w.metadata = AdapterMetadata.model_validate({**w.metadata.model_dump(), **update})
    if metadata:
        extra = metadata.model_dump(exclude_unset=True) if isinstance(metadata, AdapterMetadata) else dict(metadata)
        w.metadata = AdapterMetadata.model_validate({**w.metadata.model_dump(), **extra})
    return w


def export_adapter(source: AdapterSource, fmt: str, out: str | Path, *, base: str | Path | None = None,
                   strength: float = 1.0, dtype: str = "bf16", metadata: AdapterMetadata | dict | None = None,
                   extra: list[tuple[AdapterSource, float]] | None = None, adapter_name: str | None = None) -> Path:  # fmt: skip
    """Write ``source`` as ``fmt`` at ``out`` and return the path written.

    Args:
        source: a PEFT-wrapped model, an adapter file/folder of any supported format, or a RUN_DIR.
        fmt: one of :data:`FORMATS`.
        out: the file or folder to write; for single-file formats a folder gets a default file name.
        base: the base checkpoint (official layout) the merged formats merge into.
        strength: the merge strength of ``source`` (merged formats only).
        dtype: ``fp32``/``bf16``/``fp16`` of the adapter tensors, and of ``merged_single``.
        metadata: fields to record in the headers (see :class:`AdapterMetadata`).
        extra: further ``(adapter, strength)`` pairs merged in the same pass (merged formats only).
        adapter_name: which adapter of a PEFT model with several.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    w = as_weights(source, metadata, adapter_name)
    out = Path(out)
    if fmt == "peft":
        return write_peft(w, out, DTYPES[dtype])
    path = out if out.suffix == ".safetensors" or fmt == "merged" else out / _FILE_NAMES[fmt].format(dtype=dtype)
    if fmt in ("comfyui", "kohya"):
        return (write_comfyui if fmt == "comfyui" else write_kohya)(w, path, DTYPES[dtype])
    if base is None:
        raise ValueError(f"format {fmt!r} merges into a base checkpoint: pass base=BASE_DIR (--base)")
    adapters = [(w, strength)] + [(as_weights(s), st) for s, st in (extra or [])]
    header = {"hhtune": w.described().model_dump_json(), "hhtune_adapter_format": fmt,
              "hhtune_merged_adapters": json.dumps([{"strength": s, **a.described().model_dump()} for a, s in adapters])}  # fmt: skip
    policy = {"merged": "official", "merged_single": dtype, "merged_fp8": "fp8"}[fmt]
    return merge_into_checkpoint(base, adapters, path, single_file=fmt != "merged", policy=policy, metadata=header)


__all__ = ["FORMATS", "AdapterError", "AdapterMetadata", "LoraWeights", "as_weights", "export_adapter", "read_adapter"]
