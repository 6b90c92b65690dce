"""Applying adapter files to a model, unmerged, at a strength; call again to stack several.

``load(path, model, strength)`` reads any format hhtune exports (and PEFT's own folders,
DoRA included), checks every module and shape against the model and the base
fingerprint, and returns a PEFT-wrapped model whose active adapters are all the loaded
ones: the forward adds each adapter's delta at its own strength. The adapter keeps its
own rank and alpha (PEFT's ``set_scale`` applies the strength), so a loaded adapter can
be trained further (``trainable=True``) exactly like the one it was saved from.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from .export.formats import AdapterError, LoraWeights, read_adapter
from .fingerprint import base_fingerprint


def parse_spec(text: str) -> tuple[str, float]:
    """``"path/to/adapter:0.8"`` -> ``("path/to/adapter", 0.8)``; no suffix means strength 1."""
    path, sep, strength = text.rpartition(":")
    try:
        return (path, float(strength)) if sep and path else (text, 1.0)
    except ValueError:
        return text, 1.0


def check_compatible(w: LoraWeights, model: torch.nn.Module, source: str, check_base: bool = True) -> None:
    """Raise :class:`AdapterError` naming the problem if ``w`` cannot be applied to ``model``.

    Checked in order: every module exists and is a plain linear, every ``A``/``B`` shape
    fits it, the rank agrees with the file's metadata, and (``check_base``) the base
    fingerprint recorded in the file equals the model's.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    modules = dict(base.named_modules())
    meta = w.metadata
    for path, (a, b, _) in sorted(w.modules.items()):
        mod = modules.get(path)
        if mod is None:
            raise AdapterError(f"{source}: module {path!r} does not exist in this model")
        layer = getattr(mod, "base_layer", mod)
        if not isinstance(layer, torch.nn.Linear):
            raise AdapterError(f"{source}: {path!r} is not a plain linear (sandwich expert layers cannot take LoRA)")
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{source}: {path} has A {list(a.shape)} / B {list(b.shape)}, the model needs "
                f"[r, {layer.in_features}] / [{layer.out_features}, r]"
            )
        if meta.rank is not None and a.shape[0] != meta.rank:
            raise AdapterError(f"{source}: metadata says rank {meta.rank} but {path} has rank {a.shape[0]}")
    if check_base and meta.base_fingerprint and meta.base_fingerprint != (mine := base_fingerprint(model)):
        trained_on = f"{meta.base_name!r}, " if meta.base_name else ""
        raise AdapterError(
            f"{source} was trained on another base model ({trained_on}fingerprint {meta.base_fingerprint}; this model "
            f"has {mine}): e.g. an adapter of the super-resolution or distilled model applied to the base one, or the "
            "reverse. If this is the same base in another precision (an FP8 copy), pass check_base=False"
        )


def load(path: str | Path, model: torch.nn.Module, strength: float = 1.0, *, adapter_name: str | None = None,
         trainable: bool = False, check_base: bool = True) -> PeftModel:  # fmt: skip
    """Apply the adapter at ``path`` to ``model`` at ``strength`` and return the (PEFT-wrapped) model.

    Adapters already active on ``model`` stay active, so calling ``load`` again stacks: the
    output is base + the sum of every adapter's delta at its strength. The base stays
    frozen; the new adapter's weights train only if ``trainable``; earlier adapters keep
    their ``requires_grad``. LoRA weights are held in fp32 on the model's device.
    """
    source = str(path)
    w = read_adapter(path)
    check_compatible(w, model, source, check_base)
    active = list(model.active_adapters) if isinstance(model, PeftModel) else []
    existing = list(model.peft_config) if isinstance(model, PeftModel) else []
    name = adapter_name or "adapter_" + re.sub(r"\W", "_", Path(path).stem)  # outside PEFT's "lora_" key prefix
    while name in existing:
        name += "_"
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    config, state = w.to_peft(torch.float32)
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
    else:
        model = get_peft_model(model, config, adapter_name=name)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    if result.unexpected_keys:
        raise AdapterError(f"{source}: PEFT did not place {sorted(result.unexpected_keys)[:3]}")
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(name, strength)  # scaling = strength * alpha / r, PEFT's own strength knob
    model.base_model.set_adapter(active + [name])  # several active adapters: PEFT sums their outputs
    for n, p in model.named_parameters():  # set_adapter marks every active adapter trainable; restore
        new = f".{name}." in n and "lora_" in n
        p.requires_grad_(trainable if new else grads.get(n, False) and "lora_" in n)
    return model
