"""The PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors`` folders, and PEFT-wrapped models.

Keys are ``base_model.model.<path>.lora_A.weight`` / ``.lora_B.weight``; a sandwich expert
module has one ``.lora_B_<expert>.weight`` per adapted expert (the custom layer of
:mod:`hhtune.adapters.experts`). Scale is PEFT's ``lora_alpha / r`` (``rank_pattern`` and
``alpha_pattern`` for mixed modules). DoRA magnitudes travel only in this format.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict
from peft.utils import load_peft_weights
from peft.utils.other import get_pattern_key

from ...io import atomic_dir, atomic_save_file, atomic_write_text
from ..experts import register_experts
from ..settings import EXPERTS
from .modelspec import modelspec_header, read_metadata
from .weights import AdapterError, LoraWeights

PEFT_KEY_PREFIX = "base_model.model."
_MAGNITUDE = ".lora_magnitude_vector"


def to_peft(w: LoraWeights, dtype: torch.dtype = torch.float32) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """``w`` as ``(LoraConfig, state)`` with PEFT's saved key names, for ``set_peft_model_state_dict`` or a folder.

    Sandwich modules get one ``lora_B_<expert>`` per expert any of them adapts (zeros
    where a module lacks one), through the custom layer registered on the config.
    """
    ranks = {p: a.shape[0] for p, (a, _, _) in w.modules.items()}
    alphas = {p: al for p, (_, _, al) in w.modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(w.modules), bias="none",
                        use_dora=bool(w.magnitudes),
                        rank_pattern={p: v for p, v in ranks.items() if v != r},
                        alpha_pattern={p: v for p, v in alphas.items() if v != alpha})  # fmt: skip
    used = [e for e in EXPERTS if any(e in ex for ex in w.experts.values())]
    if used:
        register_experts(config, used)
    state = {}
    for p, (a, b, _) in sorted(w.modules.items()):
        state[f"{PEFT_KEY_PREFIX}{p}.lora_A.weight"] = a.to(dtype).contiguous()
        if p in w.experts:
            blocks = b.chunk(len(EXPERTS))
            for e in used:
                block = blocks[EXPERTS.index(e)] if e in w.experts[p] else torch.zeros_like(blocks[0])
                state[f"{PEFT_KEY_PREFIX}{p}.lora_B_{e}.weight"] = block.to(dtype).contiguous()
        else:
            state[f"{PEFT_KEY_PREFIX}{p}.lora_B.weight"] = b.to(dtype).contiguous()
        if p in w.magnitudes:
            state[f"{PEFT_KEY_PREFIX}{p}{_MAGNITUDE}"] = w.magnitudes[p].to(dtype).contiguous()
    return config, state


def from_peft_model(model: torch.nn.Module, adapter_name: str | None = None) -> LoraWeights:
    """The adapter ``adapter_name`` (default: the one active adapter) of a PEFT-wrapped model."""
    if not hasattr(model, "peft_config"):
        raise AdapterError(f"{type(model).__name__} carries no adapter: "
                           "wrap it with hhtune.adapters.inject.add_lora first")
    if adapter_name is None:
        active = list(model.active_adapters)
        if len(active) != 1:
            raise AdapterError(f"the model has {len(active)} active adapters {active}: "
                               "pass adapter_name, or merge them")
        adapter_name = active[0]
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return from_peft_state(state, model.peft_config[adapter_name].to_dict(), f"adapter {adapter_name!r}")


def from_peft_state(state: dict[str, torch.Tensor], cfg: dict, source: str) -> LoraWeights:
    """PEFT-named tensors + ``adapter_config`` -> LoraWeights; ranks and alphas resolved as PEFT resolves them."""
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{source} is a {cfg['peft_type']} adapter; only LoRA adapters are supported")
    # PEFT's own rank_pattern / alpha_pattern matching (get_pattern_key)
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    out = LoraWeights()
    for key, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AdapterError(f"{source}: tensor {key} holds NaN or infinite values; the adapter is broken")
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        path = key.split(".lora_A.")[0].removeprefix(PEFT_KEY_PREFIX)
        b = state.get(key.replace(".lora_A.", ".lora_B."))
        per_expert = {e: state.get(key.replace(".lora_A.", f".lora_B_{e}.")) for e in EXPERTS}
        if b is None and any(v is not None for v in per_expert.values()):
            ref = next(v for v in per_expert.values() if v is not None)
            b = torch.cat([v if v is not None else torch.zeros_like(ref) for v in per_expert.values()])
            out.experts[path] = tuple(e for e, v in per_expert.items() if v is not None)
        if b is None:
            raise AdapterError(f"{source}: {key} has no matching lora_B")
        r = int(rank_pattern.get(get_pattern_key(list(rank_pattern), path), cfg["r"]))
        if r != a.shape[0]:
            raise AdapterError(f"{source}: adapter_config.json says rank {r} for {path} but its "
                               f"lora_A has rank {a.shape[0]}")
        alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), path), cfg["lora_alpha"]))
        out.modules[path] = (a.detach().cpu(), b.detach().cpu(),
                             alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha)
        magnitude = state.get(f"{PEFT_KEY_PREFIX}{path}{_MAGNITUDE}")
        if magnitude is not None:
            out.magnitudes[path] = magnitude.detach().cpu()
    if not out.modules:
        raise AdapterError(f"{source} holds no LoRA weights (no lora_A/lora_B tensors)")
    out.metadata.use_rslora = bool(cfg.get("use_rslora"))
    out.fitted = True
    return out


def write_peft(w: LoraWeights, folder: Path, dtype: torch.dtype) -> Path:
    """A PEFT adapter folder that ``PeftModel.from_pretrained`` loads onto hhtune's model (DoRA included).

    PEFT does not save custom-module registrations: to load sandwich-expert modules with
    ``PeftModel.from_pretrained`` pass ``config=hhtune.adapters.inject.lora_config(...)``; hhtune's
    own loaders read the experts from the keys.
    """
    config, state = to_peft(w, dtype)
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(w.modules)  # a list keeps PEFT's exact-suffix matching (a set is not JSON)
    cfg.pop("_custom_modules", None)
    with atomic_dir(folder) as tmp:
        atomic_write_text(tmp / "adapter_config.json", json.dumps(cfg, indent=2, default=list))
        atomic_save_file(state, tmp / "adapter_model.safetensors",
                         {**modelspec_header(w), "hhtune_adapter_format": "peft"})
    return folder


def read_peft_folder(path: Path) -> LoraWeights:
    """A PEFT adapter folder (``adapter_config.json`` + weights), ours or PEFT's own."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        is_base = bool(list(path.glob("model*.safetensors")))
        hint = " (it is a base checkpoint: load it with hhtune.model.load_checkpoint)" if is_base else ""
        raise AdapterError(f"{path} is not an adapter: no adapter_config.json and no adapter/ of a training run{hint}")
    weights = [f for f in ("adapter_model.safetensors", "adapter_model.bin") if (path / f).is_file()]
    if not weights:
        raise AdapterError(f"{path} has adapter_config.json but no adapter_model.safetensors (or .bin)")
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_file} is not valid JSON ({e})") from e
    # PEFT's reader: .safetensors or .bin
    w = from_peft_state(load_peft_weights(str(path), device="cpu"), cfg, str(path))
    if weights[0].endswith(".safetensors"):
        w.metadata = read_metadata(path / weights[0], w.metadata)
    w.metadata.use_rslora = bool(cfg.get("use_rslora"))
    w.fitted = True  # PEFT's B always has the module's rows; sandwich experts are named in the keys
    return w
