"""Fitting adapter weights to a model: its adaptable modules' shapes, and the checks every loader applies.

A file from musubi-tuner holds one ``[out, r]`` update shared by the three experts of a
sandwich module: :func:`fit` stacks it against the model's shapes, so every consumer sees
the stacked ``B`` of :class:`~hhtune.adapters.formats.weights.LoraWeights`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...model.checkpoint import infer_config, read_shapes
from ...model.linears import ExpertLinear
from ..settings import EXPERTS
from .weights import AdapterError, LoraWeights

ModuleShapes = dict[str, tuple[int, int, int]]  # module path -> (rows of the stacked weight, in, experts)


def model_shapes(model: torch.nn.Module) -> ModuleShapes:
    """The adaptable modules of a model (PEFT-wrapped or not): plain linears and sandwich expert linears."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: ModuleShapes = {}
    for name, mod in base.named_modules():
        layer = getattr(mod, "base_layer", mod)
        if name.endswith(".base_layer") or ".lora_" in name:
            continue
        if isinstance(layer, ExpertLinear) and not hasattr(layer, "base_layer"):
            out[name] = (layer.num_experts * layer.out_features, layer.in_features, layer.num_experts)
        elif isinstance(layer, torch.nn.Linear):
            out[name] = (layer.out_features, layer.in_features, 1)
    return out


def checkpoint_shapes(base: str | Path) -> ModuleShapes:
    """The adaptable modules of an official-layout checkpoint, from its headers."""
    shapes = read_shapes(base)
    mm = set(infer_config(shapes).mm_layers)
    out: ModuleShapes = {}
    for key, (shape, _) in shapes.items():
        if key.endswith(".weight") and len(shape) == 2 and not key.startswith("final_"):
            path = key.removesuffix(".weight")
            m = re.match(r"block\.layers\.(\d+)\.", path)
            out[path] = (shape[0], shape[1], 3 if m and int(m.group(1)) in mm else 1)
    return out


def fit(w: LoraWeights, shapes: ModuleShapes, source: str, target: str = "the model") -> LoraWeights:
    """``w`` checked against a model's modules, sandwich ``B`` stacked like the official weight.

    A ``[out, r]`` update on a sandwich module (musubi-tuner: one update for all three
    experts) becomes ``[B; B; B]``; a stacked ``B`` without recorded experts has its
    all-zero blocks marked absent. Raises :class:`AdapterError` naming the module and reason.
    """
    out = w.copy()
    out.fitted = True
    if w.modules and not any(p in shapes for p in w.modules):
        example = min(w.modules)
        raise AdapterError(f"{source}: none of its {len(w.modules)} modules exist in {target} (e.g. {example!r}): "
                           "a LoRA for another architecture")  # fmt: skip
    for path, (a, b, alpha) in sorted(w.modules.items()):
        if path not in shapes:
            raise AdapterError(f"{source}: module {path!r} does not exist in {target} (unknown module key)")
        rows, inp, n = shapes[path]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != inp or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{source}: {path} has A {list(a.shape)} / B {list(b.shape)}, {target} needs "
                               f"[r, {inp}] / [{rows}, r]: a LoRA for another model size or variant")  # fmt: skip
        if n > 1 and b.shape[0] * n == rows:
            if path in w.magnitudes:
                raise AdapterError(f"{source}: {path}: DoRA on a sandwich expert layer is not supported")
            out.modules[path] = (a, torch.cat([b] * n), alpha)
            out.experts[path] = EXPERTS
        elif b.shape[0] == rows:
            if n > 1 and path not in out.experts:
                blocks = b.chunk(n)
                present = tuple(e for e, blk in zip(EXPERTS, blocks) if blk.abs().sum() > 0)
                out.experts[path] = present or EXPERTS
        else:
            raise AdapterError(f"{source}: {path} has B {list(b.shape)}, the weight in {target} has {rows} rows"
                               + (f" ({n} experts of {rows // n})" if n > 1 else ""))  # fmt: skip
    return out
