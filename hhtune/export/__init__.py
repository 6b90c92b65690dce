"""Adapters as standalone files: PEFT, Wan2GP, ComfyUI, kohya / musubi-tuner, and merged checkpoints.

``export_adapter(source, fmt, out, ...)`` takes a PEFT-wrapped model, an adapter file or
folder in any supported format (musubi-tuner's MagiHuman LoRAs included), or a training
run folder. Converting between formats is exporting an imported adapter.

Where each file loads (checked against each front-end's own loader code; see the tests):

| ``fmt`` | writes | loads in | scale |
| --- | --- | --- | --- |
| ``wan2gp`` | one ``.safetensors``, bare official paths ``<path>.lora_A/lora_B/alpha``; sandwich ``B`` stacked per expert | Wan2GP (``models/magi_human``, mmgp): base, distill, SR | B pre-scaled, ``alpha = r`` |
| ``merged`` | official layout folder: same shard names + ``model.safetensors.index.json``, official dtypes | official loader, ComfyUI MagiHuman node packs, FastVideo, Wan2GP | merged |
| ``merged_single`` | one ``.safetensors`` in ``dtype`` (bf16 default) | ComfyUI MagiHuman node packs, Wan2GP | merged |
| ``merged_fp8`` | one ``.safetensors``, block linears ``float8_e4m3fn`` + ``<key>.__fp8_scale`` | loaders of the community FP8 checkpoints | merged |
| ``kohya`` | one ``.safetensors``, ``lora_unet_<path>.lora_down/lora_up/alpha`` | musubi-tuner (``networks/lora_magihuman.py``), when sandwich updates are shared by the experts | B pre-scaled, ``alpha = r`` |
| ``comfyui`` | one ``.safetensors``, ``diffusion_model.<path>.lora_A/lora_B/alpha`` | ComfyUI's generic key map; ComfyUI core does not run MagiHuman yet, FastVideo applies no LoRA to it | B pre-scaled, ``alpha = r`` |
| ``peft`` | folder ``adapter_config.json`` + ``adapter_model.safetensors`` | hhtune, PEFT | ``lora_alpha`` / ``r`` |

``drop=["audio"]`` (``--drop audio``) removes the audio expert parts (and the audio
embedder's LoRA) before writing.
"""  # noqa: E501 -- a Markdown table: one row per line

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapters.apply import BaseCheck, check_same_base, check_same_stage, checkpoint_stage, model_stage
from ..adapters.base_identity import base_model_id
from ..adapters.formats.fitting import checkpoint_shapes, fit, model_shapes
from ..adapters.formats.modelspec import modelspec_header
from ..adapters.formats.peft import from_peft_model, write_peft
from ..adapters.formats.read import read_adapter
from ..adapters.formats.single import write_single
from ..adapters.formats.weights import AdapterError, AdapterMetadata, LoraWeights, drop_experts, scale_modalities
from ..adapters.provenance import read_run_adapter
from ..contract import SR_VARIANTS
from ..model import HappyHorseTransformer, ModelConfig
from .merge import merge_into_checkpoint
from .model_card import write_model_card

FORMATS = ("peft", "wan2gp", "comfyui", "kohya", "merged", "merged_single", "merged_fp8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_FILE_NAMES = {"comfyui": "adapter_comfyui.safetensors", "kohya": "adapter_kohya.safetensors",
               "wan2gp": "adapter_wan2gp.safetensors",
               "merged_single": "model_{dtype}.safetensors", "merged_fp8": "model_fp8.safetensors"}  # fmt: skip

AdapterSource = torch.nn.Module | str | Path | LoraWeights


def as_weights(source: AdapterSource, metadata: AdapterMetadata | dict | None = None,
               adapter_name: str | None = None) -> LoraWeights:  # fmt: skip
    """An adapter from a PEFT model, a path (any format; a run's adapter or checkpoint with its ``run_info.json``),
    metadata merged in.

    Precedence, lowest first: the file's own header, ``run_info.json``, then ``metadata``
    (whose unknown keys fail by name).
    """
    if isinstance(source, LoraWeights):
        w = source.copy()
    elif isinstance(source, torch.nn.Module):
        w = fit(from_peft_model(source, adapter_name), model_shapes(source), "the model")
        w.metadata.base_fingerprint = base_model_id(source)
        if model_stage(source) in SR_VARIANTS:  # base and distill share a configuration: the run names those
            w.metadata.variant = model_stage(source)
    else:
        w = read_run_adapter(source)  # a run's adapter or checkpoint: run_info.json in the metadata
    if metadata:
        extra = metadata.model_dump(exclude_unset=True) if isinstance(metadata, AdapterMetadata) else dict(metadata)
        w.metadata = AdapterMetadata.model_validate({**w.metadata.model_dump(), **extra})
    return w


def export_adapter(source: AdapterSource, fmt: str, out: str | Path, *, base: str | Path | None = None,
                   strength: float = 1.0, dtype: str = "bf16", metadata: AdapterMetadata | dict | None = None,
                   extra: list[tuple] | None = None, adapter_name: str | None = None,
                   drop: list[str] | None = None, check_base: BaseCheck = True) -> Path:  # fmt: skip
    """Write ``source`` as ``fmt`` at ``out`` and return the path written.

    Args:
        source: a PEFT-wrapped model, an adapter file/folder of any supported format, or a RUN_DIR.
        fmt: one of :data:`FORMATS`.
        out: the file or folder to write; for single-file formats a folder gets a default file name.
        base: the base checkpoint (official layout) the merged formats merge into; for the other
            formats it gives the shapes a foreign file (musubi-tuner) is fitted to (default: the 15B shapes).
        strength: the merge strength of ``source`` (merged formats only).
        dtype: ``fp32``/``bf16``/``fp16`` of the adapter tensors, and of ``merged_single``.
        metadata: fields to record in the headers (see :class:`AdapterMetadata`).
        extra: further ``(adapter, strength)`` or ``(adapter, strength, {modality: factor})`` merged in the
            same pass (merged formats only).
        adapter_name: which adapter of a PEFT model with several.
        drop: modalities (``"audio"``, ``"video"``, ``"text"``) whose expert and embedder parts are left out.
        check_base: an adapter recorded for another base than ``base`` is refused
            (:func:`~hhtune.adapters.apply.check_same_base`); ``"warn"`` warns instead (an FP8 copy of its base).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    merged = fmt.startswith("merged")
    if merged and base is None:
        raise ValueError(f"format {fmt!r} merges into a base checkpoint: pass base=BASE_DIR (--base)")
    w = as_weights(source, metadata, adapter_name)
    name = "the PEFT model's adapter" if isinstance(source, torch.nn.Module) else str(source)
    shapes = checkpoint_shapes(base) if base is not None else None
    if shapes is not None or not w.fitted:  # a foreign file's sandwich updates: fit to --base, else the 15B model
        w = fit(w, shapes or _preset_shapes("15b"), name, f"base {base}" if shapes else "the 15B model (pass --base)")
    if base is not None:  # shapes first; then the rules of hhtune.sample for another stage or base
        check_same_stage(w.metadata, checkpoint_stage(base), name)
    if base is not None and check_base:
        check_same_base(w.metadata, base_model_id(base), name, refuse=check_base is True)
    if drop:
        w = drop_experts(w, drop)
    out = Path(out)
    if fmt == "peft":
        return write_peft(w, out, DTYPES[dtype])
    path = out if out.suffix == ".safetensors" or fmt == "merged" else out / _FILE_NAMES[fmt].format(dtype=dtype)
    if not merged:
        return write_single(w, path, DTYPES[dtype], fmt, drop_shared_copies=fmt == "kohya")
    adapters = [(w, strength)]
    for s, st, *mods in extra or []:
        more = fit(as_weights(s), shapes, str(s), f"base {base}")  # type: ignore[arg-type]
        adapters.append((scale_modalities(more, mods[0]) if mods and mods[0] else more, st))
    header = {**modelspec_header(w, merged=True), "hhtune_adapter_format": fmt,
              "hhtune_merged_adapters": json.dumps([{"strength": s, **a.described().model_dump()}
                                                    for a, s in adapters])}  # fmt: skip
    policy = {"merged": "official", "merged_single": dtype, "merged_fp8": "fp8"}[fmt]
    return merge_into_checkpoint(base, adapters, path, single_file=fmt != "merged", policy=policy, metadata=header)


def _preset_shapes(name: str):
    """Module shapes of a preset, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        return model_shapes(HappyHorseTransformer(ModelConfig.preset(name)))


__all__ = ["FORMATS", "AdapterError", "AdapterMetadata", "LoraWeights", "as_weights", "export_adapter", "read_adapter",
           "write_model_card"]  # fmt: skip
