"""Applying adapter files to a model, unmerged, at a strength; call again to stack several.

``load(path, model, strength, modalities=...)`` reads any format hhtune exports (PEFT's own
folders with DoRA, Wan2GP files, and musubi-tuner's MagiHuman LoRAs included), checks
every module and shape against the model and the base model's id, and returns a
PEFT-wrapped model whose active adapters are all the loaded ones: the forward adds each
adapter's delta at its own strength. The adapter keeps its own rank and alpha (PEFT's
``set_scale`` applies the strength), so a loaded adapter can be trained further
(``trainable=True``) exactly like the one it was saved from. ``modalities``
(``{"audio": 0.5}``) scales the sandwich experts and embedders of one modality on top.

Every check runs before the model is touched, and a failure while injecting removes the
half-made adapter again: a failed load leaves the model as it was.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from ..contract import SR_VARIANTS
from ..model.variants import detect_variant
from .base_identity import base_model_id
from .experts import set_expert_strengths
from .formats.fitting import fit, model_shapes
from .formats.peft import to_peft
from .formats.weights import AdapterError, AdapterMetadata, LoraWeights
from .provenance import read_run_adapter
from .settings import EXPERTS


class AdapterSpec(NamedTuple):
    """An adapter on a command line: path, strength, and per-modality strengths (``{}``: all 1)."""

    path: str
    strength: float = 1.0
    modalities: dict[str, float] = {}  # noqa: RUF012 - a NamedTuple field default, never mutated


def parse_spec(text: str) -> AdapterSpec:
    """``PATH``, ``PATH:0.8``, ``PATH:video=1.0,audio=0.5`` or ``PATH:0.8,audio=0`` -> :class:`AdapterSpec`.

    A suffix that is not a strength list is part of the path (``C:/loras/x.safetensors``).
    """
    path, sep, tail = text.rpartition(":")
    if not sep or not path:
        return AdapterSpec(text, 1.0, {})
    strength, modalities = 1.0, {}
    try:
        for item in tail.split(","):
            name, eq, value = item.partition("=")
            if eq:
                if name.strip() not in EXPERTS:
                    raise ValueError(f"adapter spec {text!r}: unknown modality {name.strip()!r}; "
                                     f"allowed {list(EXPERTS)}")
                modalities[name.strip()] = float(value)
            else:
                strength = float(item)
    except ValueError as e:
        if "unknown modality" in str(e):
            raise
        return AdapterSpec(text, 1.0, {})
    return AdapterSpec(path, strength, modalities)


BaseCheck = bool | Literal["warn"]  # True: refuse another base; "warn": apply it with a warning; False: do not check


def check_compatible(w: LoraWeights, model: torch.nn.Module, source: str, check_base: BaseCheck = True) -> LoraWeights:
    """``w`` fitted to ``model``, or :class:`AdapterError` naming the file, module and reason.

    Checked in order: every module exists (a plain or sandwich-expert linear, or an
    embedder) and every ``A``/``B`` shape fits it (see :func:`~hhtune.adapters.formats.fitting.fit`),
    the rank agrees with the file's metadata, the stage the adapter was trained for is the model's
    (:func:`check_same_stage`, always: an SR adapter on a first-stage model, or the reverse, is refused), and the
    base model id
    (:func:`~hhtune.adapters.base_identity.base_model_id`) recorded in the file (or its run's
    ``run_info.json``) equals the model's (:func:`check_same_base`; ``check_base="warn"`` warns instead, and
    ``False``, for a deliberate transfer such as evaluation's base adapter on the distilled model, skips it).
    """
    w = fit(w, model_shapes(model), source)
    meta = w.metadata
    for path, (a, _, _) in sorted(w.modules.items()):
        if meta.rank is not None and a.shape[0] != meta.rank:
            raise AdapterError(f"{source}: metadata says rank {meta.rank} but {path} has rank {a.shape[0]}")
    check_same_stage(meta, model_stage(model), source)
    if check_base and meta.base_fingerprint:
        check_same_base(meta, base_model_id(model), source, refuse=check_base is True)
    return w


_FIRST_STAGE = "first stage"


def _stage(variant: str) -> str:
    return variant if variant in SR_VARIANTS else _FIRST_STAGE


def model_stage(model: torch.nn.Module) -> str:
    """The stage a model in memory (plain or PEFT-wrapped) runs: ``sr_540p``, ``sr_1080p`` or ``"first stage"``
    (base or distill, which share a configuration)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "sr_variant", None) or _FIRST_STAGE


def checkpoint_stage(path: str | Path) -> str | None:
    """The stage of a checkpoint folder or file (:func:`~hhtune.model.variants.detect_variant`), ``None`` if unknown."""
    found = detect_variant(path)
    return None if found.sr is None else (found.variant if found.sr else _FIRST_STAGE)


def check_same_stage(meta: AdapterMetadata, stage: str | None, source: str) -> None:
    """Refuse (:class:`AdapterError`) an adapter trained for another stage than ``stage`` (:func:`model_stage`):
    a super-resolution adapter on a first-stage model, the reverse, or one SR resolution's on the other. A file
    that names no variant, or a model of unknown stage, passes."""
    if meta.variant is None or stage is None or _stage(meta.variant) == stage:
        return
    where = ("the SR stage (--sr-adapter, validation.sr_adapter)" if meta.variant in SR_VARIANTS
             else "the first stage (--adapter)")  # fmt: skip
    raise AdapterError(f"{source} was trained on the {meta.variant} model, but this model is the "
                       f"{stage}: apply it to {where}")


def check_same_base(meta: AdapterMetadata, base_id: str, source: str, *, refuse: bool = True) -> None:
    """The one rule for an adapter recorded for another base than ``base_id`` (a :func:`base_model_id`).

    Used by :func:`load` (``hhtune.sample``, evaluation) and by ``hhtune.export --base``: refused
    with :class:`AdapterError` (exit 2), or with ``refuse=False`` a warning; both name the two
    fingerprints. An adapter that records no base (another tool's file) passes.
    """
    if not meta.base_fingerprint or meta.base_fingerprint == base_id:
        return
    trained_on = f"{meta.base_name!r}, " if meta.base_name else ""
    message = (f"{source} was trained on another base model ({trained_on}fingerprint {meta.base_fingerprint}; "
               f"this base has {base_id}): e.g. an adapter of the super-resolution or distilled model applied to the "
               "base one, the reverse, or another random init")  # fmt: skip
    if refuse:
        raise AdapterError(message + ". If this is the same base in another precision (an FP8 copy), pass "
                           "--ignore-base-mismatch (check_base='warn') to apply it with a warning")  # fmt: skip
    warnings.warn(message + "; applied anyway (--ignore-base-mismatch)", stacklevel=3)


def load(path: str | Path, model: torch.nn.Module, strength: float = 1.0, *, modalities: dict[str, float] | None = None,
         adapter_name: str | None = None, trainable: bool = False,
         check_base: BaseCheck = True) -> PeftModel:  # fmt: skip
    """Apply the adapter at ``path`` to ``model`` at ``strength`` and return the (PEFT-wrapped) model.

    Adapters already active on ``model`` stay active, so calling ``load`` again stacks: the
    output is base + the sum of every adapter's delta at its strength. ``modalities`` gives
    the sandwich experts and the embedder of a modality their own factor
    (``{"audio": 0.5}``: audio parts at half, the rest at ``strength``). The base stays
    frozen; the new adapter's weights train only if ``trainable``; earlier adapters keep
    their ``requires_grad``. LoRA weights are held in fp32 on the model's device.
    """
    source = str(path)
    modalities = dict(modalities or {})
    bad = [m for m in modalities if m not in EXPERTS]
    if bad:
        raise ValueError(f"unknown modality {bad}; allowed {list(EXPERTS)}")
    w = check_compatible(read_run_adapter(path), model, source, check_base)
    active = list(model.active_adapters) if isinstance(model, PeftModel) else []
    existing = list(model.peft_config) if isinstance(model, PeftModel) else []
    name = adapter_name or "adapter_" + re.sub(r"\W", "_", Path(path).stem)  # outside PEFT's "lora_" key prefix
    while name in existing:
        name += "_"
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    config, state = to_peft(w, torch.float32)
    fresh = not isinstance(model, PeftModel)
    try:
        # PEFT warns about every custom-mapped layer type; ours is registered on purpose
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unsupported layer type .*ExpertLinear")
            if fresh:
                model = get_peft_model(model, config, adapter_name=name)
            else:
                model.add_adapter(name, config)
        result = set_peft_model_state_dict(model, state, adapter_name=name)
        if result.unexpected_keys:
            raise AdapterError(f"{source}: PEFT did not place {sorted(result.unexpected_keys)[:3]}")
    except Exception:
        _remove(model, name, fresh)
        raise
    for mod_name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            m = re.fullmatch(r"adapter\.(video|audio|text)_embedder", mod_name)
            module.set_scale(name, strength * (modalities.get(m.group(1), 1.0) if m else 1.0))
    set_expert_strengths(model, name, modalities)
    model.base_model.set_adapter([*active, name])  # several active adapters: PEFT sums their outputs
    for n, p in model.named_parameters():  # set_adapter marks every active adapter trainable; restore
        new = f".{name}." in n and "lora_" in n
        p.requires_grad_(trainable if new else grads.get(n, False) and "lora_" in n)
    return model


def _remove(model: torch.nn.Module, name: str, fresh: bool) -> None:
    """Undo a half-made adapter: unwrap a model wrapped just now, or delete the new adapter."""
    if not isinstance(model, PeftModel) or name not in model.peft_config:
        return
    if fresh:
        model.unload()
        return
    model.delete_adapter(name)
    base = model.get_base_model()
    for mod_name, module in list(base.named_modules()):  # layers wrapped only for the failed adapter: unwrap again
        if isinstance(module, LoraLayer) and not module.lora_A and not module.lora_B and "." in mod_name:
            parent, _, child = mod_name.rpartition(".")
            setattr(base.get_submodule(parent), child, module.get_base_layer())
