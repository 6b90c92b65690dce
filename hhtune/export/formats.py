"""Adapter file formats, all converted through one in-memory form: module path -> (A, B, alpha).

| format | keys | scale | loads in (checked against the loader's code) |
| --- | --- | --- | --- |
| ``peft`` | folder: ``adapter_config.json`` + ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``; sandwich experts ``.lora_B_<expert>.weight``) | PEFT's ``lora_alpha`` / ``r`` | hhtune, PEFT |
| ``wan2gp`` | ``<path>.lora_A.weight`` ``[r, in]``, ``.lora_B.weight`` ``[out, r]``, ``.alpha`` | B pre-scaled, ``alpha = r`` | Wan2GP (``models/magi_human`` + mmgp) |
| ``kohya`` | ``lora_unet_<path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` | B pre-scaled, ``alpha = r`` | musubi-tuner ``magi-human`` (shared expert updates only) |
| ``comfyui`` | ``diffusion_model.<path>.lora_A.weight``, ``.lora_B.weight``, ``.alpha`` | B pre-scaled, ``alpha = r`` | ComfyUI's generic key map; ComfyUI core does not run MagiHuman yet |

Merged checkpoints (:mod:`hhtune.export.merge`) are the path to the ComfyUI MagiHuman node
packs and FastVideo, which apply no LoRA to MagiHuman.

``<path>`` is the official module path (``block.layers.4.attention.linear_qkv``,
``adapter.audio_embedder``). A sandwich (expert) module's ``B`` is held stacked like the
official weight, ``[3 * out, r]`` in the order video, audio, text, with zero blocks for
the experts the adapter leaves alone; ``experts`` records which blocks are real. A file
from musubi-tuner holds one ``[out, r]`` update shared by the three experts: :func:`fit`
stacks it against the model's shapes. An rsLoRA adapter is held with ``alpha * sqrt(r)``
so every consumer's ``alpha / r`` applies the same update. DoRA magnitudes travel only
in the PEFT format.
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
    title: str | None = Field(None, description="modelspec.title shown by ComfyUI / Civitai tooling")
    resolution: str | None = Field(None, description='modelspec.resolution, e.g. "448x256"')
    license: str | None = None


@dataclass
class LoraWeights:
    """One adapter: per module ``A [r, in]``, ``B [out, r]`` and ``alpha`` (scale = alpha / r)."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    metadata: AdapterMetadata = field(default_factory=AdapterMetadata)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)  # DoRA only: module path -> [out]
    experts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # sandwich modules: the real blocks of B
    fitted: bool = False  # B already has the model's row count (hhtune's own files and models)

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
        """``(LoraConfig, state)`` with PEFT's saved key names, for ``set_peft_model_state_dict`` or a folder.

        Sandwich modules get one ``lora_B_<expert>`` per expert any of them adapts (zeros
        where a module lacks one), through the custom layer registered on the config.
        """
        from peft import LoraConfig

        from ..lora_experts import EXPERTS, register_experts

        ranks = {p: a.shape[0] for p, (a, _, _) in self.modules.items()}
        alphas = {p: al for p, (_, _, al) in self.modules.items()}
        r = Counter(ranks.values()).most_common(1)[0][0]
        alpha = Counter(alphas.values()).most_common(1)[0][0]
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(self.modules), bias="none",
                            use_dora=bool(self.magnitudes),
                            rank_pattern={p: v for p, v in ranks.items() if v != r},
                            alpha_pattern={p: v for p, v in alphas.items() if v != alpha})  # fmt: skip
        used = [e for e in EXPERTS if any(e in ex for ex in self.experts.values())]
        if used:
            register_experts(config, used)
        state = {}
        for p, (a, b, _) in sorted(self.modules.items()):
            state[f"{_PEFT_PREFIX}{p}.lora_A.weight"] = a.to(dtype).contiguous()
            if p in self.experts:
                blocks = b.chunk(len(EXPERTS))
                for e in used:
                    block = blocks[EXPERTS.index(e)] if e in self.experts[p] else torch.zeros_like(blocks[0])
                    state[f"{_PEFT_PREFIX}{p}.lora_B_{e}.weight"] = block.to(dtype).contiguous()
            else:
                state[f"{_PEFT_PREFIX}{p}.lora_B.weight"] = b.to(dtype).contiguous()
            if p in self.magnitudes:
                state[f"{_PEFT_PREFIX}{p}{_MAGNITUDE}"] = self.magnitudes[p].to(dtype).contiguous()
        return config, state

    def copy(self) -> LoraWeights:
        """A shallow copy whose dicts (not tensors) may be changed."""
        return LoraWeights(dict(self.modules), self.metadata.model_copy(), dict(self.magnitudes), dict(self.experts),
                           self.fitted)  # fmt: skip


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
    from ..lora_experts import EXPERTS

    out = LoraWeights()
    for key, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AdapterError(f"{source}: tensor {key} holds NaN or infinite values; the adapter is broken")
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        path = key.split(".lora_A.")[0].removeprefix(_PEFT_PREFIX)
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
            raise AdapterError(f"{source}: adapter_config.json says rank {r} for {path} but its lora_A has rank {a.shape[0]}")
        alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), path), cfg["lora_alpha"]))
        out.modules[path] = (a.detach().cpu(), b.detach().cpu(), alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha)
        magnitude = state.get(f"{_PEFT_PREFIX}{path}{_MAGNITUDE}")
        if magnitude is not None:
            out.magnitudes[path] = magnitude.detach().cpu()
    if not out.modules:
        raise AdapterError(f"{source} holds no LoRA weights (no lora_A/lora_B tensors)")
    out.metadata.use_rslora = bool(cfg.get("use_rslora"))
    out.fitted = True
    return out


# --------------------------------------------------------------------------- writing


def write_peft(w: LoraWeights, folder: Path, dtype: torch.dtype) -> Path:
    """A PEFT adapter folder that ``PeftModel.from_pretrained`` loads onto hhtune's model (DoRA included).

    PEFT does not save custom-module registrations: to load sandwich-expert modules with
    ``PeftModel.from_pretrained`` pass ``config=hhtune.lora.lora_config(...)``; hhtune's
    own loaders read the experts from the keys.
    """
    from .modelspec import modelspec_header

    config, state = w.to_peft(dtype)
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(w.modules)  # a list keeps PEFT's exact-suffix matching (a set is not JSON)
    cfg.pop("_custom_modules", None)
    with atomic_dir(folder) as tmp:
        atomic_write_text(tmp / "adapter_config.json", json.dumps(cfg, indent=2, default=list))
        atomic_save_file(state, tmp / "adapter_model.safetensors", {**modelspec_header(w), "hhtune_adapter_format": "peft"})
    return folder


# --------------------------------------------------------------------------- reading


def read_adapter(path: str | Path) -> LoraWeights:
    """Read any supported adapter: a PEFT folder (ours or PEFT's own), a ComfyUI, kohya / musubi-tuner
    or Wan2GP file, or a RUN_DIR."""
    from ._singlefile import read_single
    from .modelspec import check_architecture

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
            header = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for foreign or truncated files
        raise AdapterError(f"{path} is not a safetensors file ({e})") from e
    check_architecture(header, str(path))
    if any(k.startswith(_PEFT_PREFIX) for k in keys):
        raise AdapterError(f"{path} holds PEFT-style keys without adapter_config.json; pass the whole PEFT folder")
    if not any(k.endswith((".lora_A.weight", ".lora_down.weight")) for k in keys):
        raise AdapterError(
            f"{path} is not a LoRA adapter (no lora_A/lora_B or lora_down/lora_up keys; it holds e.g. {keys[:2]}): "
            "a base checkpoint loads with hhtune.model.load_checkpoint"
        )
    w = read_single(path, keys)
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
    w.fitted = True  # PEFT's B always has the module's rows; sandwich experts are named in the keys
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


# --------------------------------------------------------------------------- fitting to a model

ModuleShapes = dict[str, tuple[int, int, int]]  # module path -> (rows of the stacked weight, in, experts)


def model_shapes(model: torch.nn.Module) -> ModuleShapes:
    """The adaptable modules of a model (PEFT-wrapped or not): plain linears and sandwich expert linears."""
    from ..model.transformer import ExpertLinear

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
    from ..model.checkpoint import infer_config, read_shapes

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
    from ..lora_experts import EXPERTS

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


def drop_experts(w: LoraWeights, drop: list[str]) -> LoraWeights:
    """``w`` without the named modalities: their sandwich ``B`` blocks zeroed and their embedder LoRAs removed."""
    from ..lora_experts import EXPERTS

    bad = [e for e in drop if e not in EXPERTS]
    if bad:
        raise ValueError(f"cannot drop {bad}: allowed {list(EXPERTS)}")
    out = w.copy()
    for path in list(out.modules):
        if any(path == f"adapter.{e}_embedder" for e in drop):
            del out.modules[path]
            out.magnitudes.pop(path, None)
    for path, experts in w.experts.items():
        a, b, alpha = out.modules[path]
        b = b.clone()
        for e in drop:
            i = EXPERTS.index(e)
            n = b.shape[0] // len(EXPERTS)
            b[i * n : (i + 1) * n] = 0
        keep = tuple(e for e in experts if e not in drop)
        if keep:
            out.modules[path], out.experts[path] = (a, b, alpha), keep
        else:
            del out.modules[path]
            del out.experts[path]
    if not out.modules:
        raise AdapterError(f"dropping {drop} leaves nothing of the adapter")
    return out


def scale_modalities(w: LoraWeights, modalities: dict[str, float]) -> LoraWeights:
    """``w`` with each named modality's expert blocks of ``B`` and embedder ``B`` multiplied by its factor."""
    from ..lora_experts import EXPERTS

    out = w.copy()
    for m, f in modalities.items():
        i = EXPERTS.index(m)
        emb = f"adapter.{m}_embedder"
        if emb in out.modules:
            a, b, alpha = out.modules[emb]
            out.modules[emb] = (a, b * f, alpha)
        for path in w.experts:
            a, b, alpha = out.modules[path]
            b = b.clone()
            n = b.shape[0] // len(EXPERTS)
            b[i * n : (i + 1) * n] *= f
            out.modules[path] = (a, b, alpha)
    return out
