"""Applying adapter files to a model, unmerged, at a strength; call again to stack several.

``load(path, model, strength)`` reads any format hhtune exports (and PEFT's own
folders), checks every module and shape against the model and the base fingerprint,
and returns a PEFT-wrapped model whose active adapters are all the loaded ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .export.formats import AdapterError, LoraWeights, read_adapter
from .fingerprint import base_fingerprint


def parse_spec(text: str) -> tuple[str, float]:
    """``"path/to/adapter:0.8"`` -> ``("path/to/adapter", 0.8)``; no suffix means strength 1."""
    path, sep, strength = text.rpartition(":")
    try:
        return (path, float(strength)) if sep and path else (text, 1.0)
    except ValueError:
        return text, 1.0


def _check(w: LoraWeights, model: torch.nn.Module, source: str) -> None:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    modules = dict(base.named_modules())
    meta = w.metadata
    if meta.base_fingerprint and meta.base_fingerprint != base_fingerprint(model):
        raise AdapterError(
            f"{source} was trained on another base model (fingerprint {meta.base_fingerprint}, this model "
            f"{base_fingerprint(model)}), e.g. an adapter of the super-resolution model applied to the base one"
        )
    for path, (a, b, _) in w.modules.items():
        mod = modules.get(path)
        if mod is None:
            raise AdapterError(f"{source}: module {path!r} does not exist in this model")
        layer = getattr(mod, "base_layer", mod)
        if not isinstance(layer, torch.nn.Linear):
            raise AdapterError(f"{source}: {path!r} is not a plain linear (sandwich expert layers cannot take LoRA)")
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{source}: {path} has A {list(a.shape)} / B {list(b.shape)}, the model needs "
                f"[r, {layer.in_features}] / [{layer.out_features}, r]"
            )
        if meta.rank is not None and a.shape[0] != meta.rank:
            raise AdapterError(f"{source}: metadata says rank {meta.rank} but {path} has rank {a.shape[0]}")


def load(path: str | Path, model: torch.nn.Module, strength: float = 1.0, adapter_name: str | None = None) -> PeftModel:
    """Apply the adapter at ``path`` to ``model`` at ``strength``; returns the (PEFT-wrapped) model."""
    w = read_adapter(path)
    _check(w, model, str(path))
    existing = list(model.peft_config) if isinstance(model, PeftModel) else []
    name = adapter_name or "adapter_" + re.sub(r"\W", "_", Path(path).stem)  # never inside PEFT's "lora_" prefix
    while name in existing:
        name += "_"
    ranks = {p: a.shape[0] for p, (a, _, _) in w.modules.items()}
    r = max(ranks.values())
    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(w.modules), rank_pattern=ranks,
                        alpha_pattern={p: float(ranks[p]) for p in ranks})  # scale 1; alpha/r is folded into B  # fmt: skip
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
    else:
        model = get_peft_model(model, config, adapter_name=name)
    base = model.get_base_model()
    with torch.no_grad():
        for p, (a, b, alpha) in w.modules.items():
            layer = base.get_submodule(p)
            layer.lora_A[name].weight.copy_(a.float())
            layer.lora_B[name].weight.copy_(b.float() * (strength * alpha / a.shape[0]))
    model.base_model.set_adapter(existing + [name])
    for n, p in model.named_parameters():
        p.requires_grad_(False)
    return model
