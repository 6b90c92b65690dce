"""Adapter file formats, all converted through one in-memory form: module path -> (A, B, alpha).

| format | keys |
| --- | --- |
| ``peft`` | folder: ``adapter_config.json`` + ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``) |
| ``comfyui`` | ``diffusion_model.<path>.lora_A.weight`` ``[r, in]``, ``.lora_B.weight`` ``[out, r]``, ``.alpha`` (scalar) |
| ``kohya`` | ``lora_unet_<path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` |

``<path>`` is the official module path (``block.layers.4.attention.linear_qkv``), the
names FastVideo uses unchanged. The effective scale is always ``alpha / r``; an rsLoRA
adapter is written with ``alpha * sqrt(r)`` so consumers that know only ``alpha / r``
apply the same update.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import load_file

from ..io import atomic_dir, atomic_save_file

FORMAT_VERSION = 1
_METADATA_KEY = "hhtune"


class AdapterError(ValueError):
    """A file that cannot be used as an adapter for this model, and why."""


class AdapterMetadata(BaseModel):
    """What an adapter file says about itself (stored in every safetensors header)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    base_fingerprint: str | None = None
    rank: int | None = None
    alpha: float | None = None
    targets: list[str] = Field(default_factory=list)
    layers: list[int] = Field(default_factory=list)
    trigger_words: list[str] = Field(default_factory=list)
    languages: list[str] = Field(default_factory=list)
    training_steps: int | None = None
    dataset_summary: dict = Field(default_factory=dict)
    recipe_hash: str | None = None
    use_rslora: bool = False
    use_dora: bool = False


@dataclass
class LoraWeights:
    """One adapter: per module ``A [r, in]``, ``B [out, r]`` and ``alpha`` (scale = alpha / r)."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    metadata: AdapterMetadata = field(default_factory=AdapterMetadata)

    def delta(self, path: str) -> torch.Tensor:
        """``alpha / r * B @ A`` of one module, in fp32."""
        a, b, alpha = self.modules[path]
        return (b.float() @ a.float()) * (alpha / a.shape[0])

    def described(self) -> AdapterMetadata:
        """Metadata with rank, alpha, targets and layers filled in from the weights."""
        paths = sorted(self.modules)
        ranks = {a.shape[0] for a, _, _ in self.modules.values()}
        alphas = {al for _, _, al in self.modules.values()}
        meta = self.metadata.model_copy()
        meta.rank = ranks.pop() if len(ranks) == 1 else meta.rank
        meta.alpha = alphas.pop() if len(alphas) == 1 else meta.alpha
        meta.targets = sorted({p.rsplit(".", 1)[1] for p in paths})
        meta.layers = sorted({int(m.group(1)) for p in paths if (m := re.search(r"layers\.(\d+)\.", p))})
        return meta


# --------------------------------------------------------------------------- from a PEFT model


def from_peft_model(model: torch.nn.Module, adapter_name: str = "default") -> LoraWeights:
    """The adapter of a PEFT-wrapped model (rsLoRA folded into alpha)."""
    from peft import get_peft_model_state_dict

    config = model.peft_config[adapter_name]
    if config.use_dora:
        raise AdapterError("DoRA adapters carry magnitude vectors the generic formats cannot hold; export them as peft")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return _from_peft_state(state, config.r, config.lora_alpha, config.use_rslora, config.alpha_pattern)


def _from_peft_state(state, r, alpha, rslora, alpha_pattern=None) -> LoraWeights:
    out = LoraWeights()
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        path = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = state[key.replace(".lora_A.", ".lora_B.")]
        rank = a.shape[0]
        al = float((alpha_pattern or {}).get(path, alpha))
        out.modules[path] = (a.detach().cpu(), b.detach().cpu(), al * math.sqrt(rank) if rslora else al)
    out.metadata.use_rslora = bool(rslora)
    return out


# --------------------------------------------------------------------------- writing


def _header(meta: AdapterMetadata, fmt: str) -> dict[str, str]:
    return {_METADATA_KEY: meta.model_dump_json(), "format": "pt", "hhtune_adapter_format": fmt}


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous()


def _write_pairs(w: LoraWeights, path: Path, dtype: torch.dtype, fmt: str, stem, a_name: str, b_name: str) -> Path:
    tensors = {}
    for p, (a, b, alpha) in sorted(w.modules.items()):
        k = stem(p)
        tensors[f"{k}.{a_name}.weight"] = _cast(a, dtype)
        tensors[f"{k}.{b_name}.weight"] = _cast(b, dtype)
        tensors[f"{k}.alpha"] = torch.tensor(alpha, dtype=torch.float32)  # always written: a missing alpha means scale 1
    atomic_save_file(tensors, path, _header(w.described(), fmt))
    return path


def write_comfyui(w: LoraWeights, path: Path, dtype: torch.dtype) -> Path:
    """One safetensors file in ComfyUI / FastVideo's generic LoRA layout."""
    return _write_pairs(w, path, dtype, "comfyui", lambda p: f"diffusion_model.{p}", "lora_A", "lora_B")


def write_kohya(w: LoraWeights, path: Path, dtype: torch.dtype) -> Path:
    """One safetensors file with kohya-ss key names."""
    return _write_pairs(w, path, dtype, "kohya", lambda p: "lora_unet_" + p.replace(".", "_"), "lora_down", "lora_up")


def write_peft(w: LoraWeights, folder: Path, dtype: torch.dtype) -> Path:
    """A PEFT adapter folder that ``PeftModel.from_pretrained`` loads onto hhtune's model."""
    from peft import LoraConfig

    meta = w.described()
    ranks = {p: a.shape[0] for p, (a, _, _) in w.modules.items()}
    alphas = {p: al for p, (_, _, al) in w.modules.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(w.modules), bias="none",
                        rank_pattern={p: v for p, v in ranks.items() if v != r},
                        alpha_pattern={p: v for p, v in alphas.items() if v != alpha})  # fmt: skip
    tensors = {}
    for p, (a, b, _) in sorted(w.modules.items()):
        tensors[f"base_model.model.{p}.lora_A.weight"] = _cast(a, dtype)
        tensors[f"base_model.model.{p}.lora_B.weight"] = _cast(b, dtype)
    with atomic_dir(folder) as tmp:
        cfg = config.to_dict()
        cfg["target_modules"] = sorted(w.modules)
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, default=list))
        atomic_save_file(tensors, tmp / "adapter_model.safetensors", _header(meta, "peft"))
    return folder


# --------------------------------------------------------------------------- reading


def read_adapter(path: str | Path) -> LoraWeights:
    """Read any supported adapter: a PEFT folder (ours or PEFT's own), a ComfyUI or kohya file, or a RUN_DIR."""
    path = Path(path)
    if path.is_dir() and (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"{path} is not an adapter: no adapter_config.json (and not a training run folder)")
        cfg = json.loads((path / "adapter_config.json").read_text())
        files = [path / "adapter_model.safetensors"]
        if not files[0].is_file():
            raise AdapterError(f"{path} has adapter_config.json but no adapter_model.safetensors")
        state = load_file(files[0])
        w = _from_peft_state(state, cfg["r"], cfg["lora_alpha"], cfg.get("use_rslora", False), cfg.get("alpha_pattern"))
        w.metadata = _read_meta(files[0], w.metadata)
        if cfg.get("use_dora"):
            raise AdapterError(f"{path} is a DoRA adapter: load it with peft.PeftModel.from_pretrained")
        return w
    if not path.is_file():
        raise AdapterError(f"adapter not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises several types for foreign files
        raise AdapterError(f"{path} is not a safetensors file ({e})") from e
    state = load_file(path)
    if any(k.startswith("diffusion_model.") and ".lora_A." in k for k in keys):
        w = _read_pairs(state, "diffusion_model.", ".lora_A.weight", ".lora_B.weight", lambda s: s)
    elif any(k.startswith("lora_unet_") for k in keys):
        w = _read_pairs(state, "lora_unet_", ".lora_down.weight", ".lora_up.weight", _kohya_path)
    elif any(".lora_A." in k for k in keys):
        raise AdapterError(f"{path} holds PEFT-style keys without adapter_config.json; keep the PEFT folder together")
    else:
        raise AdapterError(
            f"{path} is not a LoRA adapter (no lora_A/lora_B, lora_down/lora_up keys; e.g. {keys[:2]}): "
            "a base checkpoint loads with hhtune.model.load_checkpoint"
        )
    w.metadata = _read_meta(path, w.metadata)
    return w


def _read_meta(path: Path, default: AdapterMetadata) -> AdapterMetadata:
    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(_METADATA_KEY)
    if not raw:
        return default
    try:
        return AdapterMetadata.model_validate_json(raw)
    except Exception as e:  # pydantic errors: report the header as unreadable
        raise AdapterError(f"{path}: unreadable hhtune metadata ({e})") from e


_KOHYA_PATH = re.compile(r"^block_layers_(\d+)_(attention|mlp)_(.+)$")


def _kohya_path(stem: str) -> str:
    m = _KOHYA_PATH.match(stem)
    if not m:
        raise AdapterError(f"kohya key lora_unet_{stem} does not name a HappyHorse block module")
    return f"block.layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"


def _read_pairs(state, prefix: str, a_suffix: str, b_suffix: str, to_path) -> LoraWeights:
    out = LoraWeights()
    for key, a in state.items():
        if not key.endswith(a_suffix):
            continue
        stem = key[len(prefix) : -len(a_suffix)]
        b_key = key[: -len(a_suffix)] + b_suffix
        if b_key not in state:
            raise AdapterError(f"{key} has no matching {b_key}")
        alpha_key = key[: -len(a_suffix)] + ".alpha"
        alpha = float(state[alpha_key]) if alpha_key in state else float(a.shape[0])  # no alpha: scale 1, as ComfyUI
        out.modules[to_path(stem)] = (a, state[b_key], alpha)
    return out
