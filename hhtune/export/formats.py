"""Adapter file formats, all converted through one in-memory form: module path -> (A, B, alpha).

| format | keys |
| --- | --- |
| ``peft`` | folder: ``adapter_config.json`` + ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``) |
| ``comfyui`` | ``diffusion_model.<path>.lora_A.weight`` ``[r, in]``, ``.lora_B.weight`` ``[out, r]``, ``.alpha`` (scalar) |
| ``kohya`` | ``lora_unet_<path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` |

``<path>`` is the official module path (``block.layers.4.attention.linear_qkv``), the
names FastVideo uses unchanged. The effective scale is always ``alpha / r``; an rsLoRA
adapter is held (and written) with ``alpha * sqrt(r)`` so consumers that know only
``alpha / r`` apply the same update. DoRA magnitudes travel only in the PEFT format.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import load_file

from ..io import atomic_dir, atomic_save_file, atomic_write_text

FORMAT_VERSION = 1
METADATA_KEY = "hhtune"
_PEFT_PREFIX = "base_model.model."
_MAGNITUDE = ".lora_magnitude_vector"


class AdapterError(ValueError):
    """A file that cannot be used as an adapter for this model, and why."""


class AdapterMetadata(BaseModel):
    """What an adapter file says about itself (stored in every safetensors header as JSON under ``"hhtune"``)."""

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
    base_name: str | None = Field(None, description="the base checkpoint or preset it was trained on (for messages)")


@dataclass
class LoraWeights:
    """One adapter: per module ``A [r, in]``, ``B [out, r]`` and ``alpha`` (scale = alpha / r)."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    metadata: AdapterMetadata = field(default_factory=AdapterMetadata)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)  # DoRA only: module path -> [out]

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
        meta.rank = ranks.pop() if len(ranks) == 1 else None  # mixed ranks: see the tensors
        meta.alpha = alphas.pop() if len(alphas) == 1 else None
        meta.targets = sorted({p.rsplit(".", 1)[1] for p in paths})
        meta.layers = sorted({int(m.group(1)) for p in paths if (m := re.search(r"layers\.(\d+)\.", p))})
        meta.use_dora = bool(self.magnitudes)
        return meta

    def to_peft(self, dtype: torch.dtype = torch.float32):
        """``(LoraConfig, state)`` with PEFT's saved key names, for ``set_peft_model_state_dict`` or a folder."""
        from peft import LoraConfig

        ranks = {p: a.shape[0] for p, (a, _, _) in self.modules.items()}
        alphas = {p: al for p, (_, _, al) in self.modules.items()}
        r = Counter(ranks.values()).most_common(1)[0][0]
        alpha = Counter(alphas.values()).most_common(1)[0][0]
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(self.modules), bias="none",
                            use_dora=bool(self.magnitudes),
                            rank_pattern={p: v for p, v in ranks.items() if v != r},
                            alpha_pattern={p: v for p, v in alphas.items() if v != alpha})  # fmt: skip
        state = {}
        for p, (a, b, _) in sorted(self.modules.items()):
            state[f"{_PEFT_PREFIX}{p}.lora_A.weight"] = a.to(dtype).contiguous()
            state[f"{_PEFT_PREFIX}{p}.lora_B.weight"] = b.to(dtype).contiguous()
            if p in self.magnitudes:
                state[f"{_PEFT_PREFIX}{p}{_MAGNITUDE}"] = self.magnitudes[p].to(dtype).contiguous()
        return config, state


# --------------------------------------------------------------------------- from PEFT


def from_peft_model(model: torch.nn.Module, adapter_name: str | None = None) -> LoraWeights:
    """The adapter ``adapter_name`` (default: the one active adapter) of a PEFT-wrapped model."""
    from peft import get_peft_model_state_dict

    if not hasattr(model, "peft_config"):
        raise AdapterError(f"{type(model).__name__} carries no adapter: wrap it with hhtune.lora.add_lora first")
    if adapter_name is None:
        active = list(model.active_adapters)
        if len(active) != 1:
            raise AdapterError(f"the model has {len(active)} active adapters {active}: pass adapter_name, or merge them")
        adapter_name = active[0]
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return _from_peft_state(state, model.peft_config[adapter_name].to_dict(), f"adapter {adapter_name!r}")


def _from_peft_state(state: dict[str, torch.Tensor], cfg: dict, source: str) -> LoraWeights:
    """PEFT-named tensors + ``adapter_config`` -> LoraWeights; ranks and alphas resolved as PEFT resolves them."""
    from peft.utils.other import get_pattern_key  # PEFT's own rank_pattern / alpha_pattern matching

    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{source} is a {cfg['peft_type']} adapter; only LoRA adapters are supported")
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    out = LoraWeights()
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        path = key.split(".lora_A.")[0].removeprefix(_PEFT_PREFIX)
        b = state.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise AdapterError(f"{source}: {key} has no matching lora_B")
        r = int(rank_pattern.get(get_pattern_key(list(rank_pattern), path), cfg["r"]))
        if r != a.shape[0]:
            raise AdapterError(f"{source}: adapter_config.json says rank {r} for {path} but its lora_A has rank {a.shape[0]}")
        alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), path), cfg["lora_alpha"]))
        out.modules[path] = (a.detach().cpu(), b.detach().cpu(), alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha)
        magnitude = state.get(f"{_PEFT_PREFIX}{path}{_MAGNITUDE}")
        if magnitude is not None:
            out.magnitudes[path] = magnitude.detach().cpu()
    if not out.modules:
        raise AdapterError(f"{source} holds no LoRA weights (no lora_A/lora_B tensors)")
    out.metadata.use_rslora = bool(cfg.get("use_rslora"))
    return out


# --------------------------------------------------------------------------- writing


def _header(meta: AdapterMetadata, fmt: str) -> dict[str, str]:
    return {METADATA_KEY: meta.model_dump_json(), "format": "pt", "hhtune_adapter_format": fmt}


def _no_dora(w: LoraWeights, fmt: str) -> None:
    if w.magnitudes:
        raise AdapterError(f"a DoRA adapter carries magnitude vectors the {fmt} format cannot hold; export it as peft")


def _write_pairs(w: LoraWeights, path: Path, dtype: torch.dtype, fmt: str, stem, a_name: str, b_name: str) -> Path:
    _no_dora(w, fmt)
    tensors = {}
    for p, (a, b, alpha) in sorted(w.modules.items()):
        k = stem(p)
        tensors[f"{k}.{a_name}.weight"] = a.to(dtype).contiguous()
        tensors[f"{k}.{b_name}.weight"] = b.to(dtype).contiguous()
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
    """A PEFT adapter folder that ``PeftModel.from_pretrained`` loads onto hhtune's model (DoRA included)."""
    config, state = w.to_peft(dtype)
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(w.modules)  # a list keeps PEFT's exact-suffix matching (a set is not JSON)
    with atomic_dir(folder) as tmp:
        atomic_write_text(tmp / "adapter_config.json", json.dumps(cfg, indent=2, default=list))
        atomic_save_file(state, tmp / "adapter_model.safetensors", _header(w.described(), "peft"))
    return folder


# --------------------------------------------------------------------------- reading


def read_adapter(path: str | Path) -> LoraWeights:
    """Read any supported adapter: a PEFT folder (ours or PEFT's own), a ComfyUI or kohya file, or a RUN_DIR."""
    path = Path(path)
    if path.is_dir() and (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    if path.is_dir():
        return _read_peft_folder(path)
    if not path.is_file():
        raise AdapterError(f"adapter not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises several types for foreign or truncated files
        raise AdapterError(f"{path} is not a safetensors file ({e})") from e
    if any(k.startswith("diffusion_model.") and k.endswith(".lora_A.weight") for k in keys):
        w = _read_pairs(load_file(path), "diffusion_model.", ".lora_A.weight", ".lora_B.weight", str(path))
    elif any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys):
        w = _read_pairs(load_file(path), "lora_unet_", ".lora_down.weight", ".lora_up.weight", str(path))
        w.modules = {_kohya_path(stem, str(path)): v for stem, v in w.modules.items()}
    elif any(".lora_A." in k for k in keys):
        raise AdapterError(f"{path} holds PEFT-style keys without adapter_config.json; pass the whole PEFT folder")
    else:
        raise AdapterError(
            f"{path} is not a LoRA adapter (no lora_A/lora_B or lora_down/lora_up keys; it holds e.g. {keys[:2]}): "
            "a base checkpoint loads with hhtune.model.load_checkpoint"
        )
    w.metadata = _read_meta(path, w.metadata)
    return w


def _read_peft_folder(path: Path) -> LoraWeights:
    from peft.utils import load_peft_weights

    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        hint = " (it is a base checkpoint: load it with hhtune.model.load_checkpoint)" if list(path.glob("model*.safetensors")) else ""
        raise AdapterError(f"{path} is not an adapter: no adapter_config.json and no adapter/ of a training run{hint}")
    weights = [f for f in ("adapter_model.safetensors", "adapter_model.bin") if (path / f).is_file()]
    if not weights:
        raise AdapterError(f"{path} has adapter_config.json but no adapter_model.safetensors (or .bin)")
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_file} is not valid JSON ({e})") from e
    w = _from_peft_state(load_peft_weights(str(path), device="cpu"), cfg, str(path))  # PEFT's reader: .safetensors or .bin
    if weights[0].endswith(".safetensors"):
        w.metadata = _read_meta(path / weights[0], w.metadata)
    w.metadata.use_rslora = bool(cfg.get("use_rslora"))
    return w


def _read_meta(path: Path, default: AdapterMetadata) -> AdapterMetadata:
    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if not raw:
        return default
    try:
        return AdapterMetadata.model_validate_json(raw)
    except ValueError as e:  # pydantic's ValidationError: report the header as unreadable
        raise AdapterError(f"{path}: unreadable hhtune metadata ({e})") from e


_KOHYA_PATH = re.compile(r"^block_layers_(\d+)_(attention|mlp)_(.+)$")


def _kohya_path(stem: str, source: str) -> str:
    # kohya names replace every dot by "_", so the split is ambiguous in general; HappyHorse's
    # adaptable modules all sit at block.layers.N.(attention|mlp).<name>, which is unambiguous.
    m = _KOHYA_PATH.match(stem)
    if not m:
        raise AdapterError(f"{source}: kohya key lora_unet_{stem} does not name a HappyHorse block module")
    return f"block.layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"


def _read_pairs(state, prefix: str, a_suffix: str, b_suffix: str, source: str) -> LoraWeights:
    out = LoraWeights()
    for key, a in state.items():
        if not key.endswith(a_suffix):
            continue
        stem = key[len(prefix) : -len(a_suffix)]
        b_key = key[: -len(a_suffix)] + b_suffix
        if b_key not in state:
            raise AdapterError(f"{source}: {key} has no matching {b_key}")
        alpha_key = key[: -len(a_suffix)] + ".alpha"
        alpha = float(state[alpha_key]) if alpha_key in state else float(a.shape[0])  # no alpha: scale 1, as ComfyUI
        out.modules[stem] = (a, state[b_key], alpha)
    return out
