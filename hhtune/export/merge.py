"""Merging adapters into a base checkpoint, shard by shard, in the official layout.

Only one input shard (plus its merged copy) is in memory at a time, so merging the 15B
model needs about two shards of host memory, not two models. Every file is written
atomically and the index last.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..io import atomic_save_file, atomic_write_text
from ..model.checkpoint import CONFIG_NAME, FP8_SCALE_SUFFIX, INDEX_NAME, checkpoint_files
from .formats import AdapterError, LoraWeights

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def _merged_shard(file: Path, adapters: list[tuple[LoraWeights, float]], dtype: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with safe_open(file, framework="pt") as f:
        keys = list(f.keys())
        scales = {k[: -len(FP8_SCALE_SUFFIX)]: f.get_tensor(k).float() for k in keys if k.endswith(FP8_SCALE_SUFFIX)}
        for key in keys:
            if key.endswith(FP8_SCALE_SUFFIX):
                continue
            t = f.get_tensor(key)
            original = t.dtype
            if original == FP8:
                s = scales[key]
                t = t.float() * (s.reshape(-1, 1) if s.numel() > 1 else s)
                original = torch.bfloat16
            path = key.removesuffix(".weight")
            deltas = [(w, strength) for w, strength in adapters if path in w.modules]
            if deltas:
                t = _add_deltas(path, t.to(original), deltas)
            out.update(_store(key, t.to(original), dtype))
    return out


def _add_deltas(path: str, t: torch.Tensor, deltas: list[tuple[LoraWeights, float]], rows: int = 2048) -> torch.Tensor:
    """``t + sum(strength * alpha/r * B @ A)`` computed in fp32 a block of rows at a time (bounded temporaries)."""
    for w, _ in deltas:
        a, b, _ = w.modules[path]
        if (b.shape[0], a.shape[1]) != tuple(t.shape):
            raise AdapterError(f"{path}: adapter delta {[b.shape[0], a.shape[1]]} does not fit base weight {list(t.shape)}")
    t = t.clone()
    for start in range(0, t.shape[0], rows):
        block = t[start : start + rows].float()
        for w, strength in deltas:
            a, b, alpha = w.modules[path]
            block += (strength * alpha / a.shape[0]) * (b[start : start + rows].float() @ a.float())
        t[start : start + rows] = block.to(t.dtype)
    return t


def _store(key: str, t: torch.Tensor, dtype: str) -> dict[str, torch.Tensor]:
    """The official dtype policy (``"official"``), all-bf16 (``"bf16"``), or FP8 block linears (``"fp8"``)."""
    if dtype == "bf16" and t.is_floating_point():
        return {key: t.to(torch.bfloat16).contiguous()}
    if dtype == "fp8" and t.dtype == torch.bfloat16 and t.dim() == 2:
        scale = t.float().abs().max().clamp_min(1e-12) / FP8_MAX
        return {key: (t.float() / scale).to(FP8).contiguous(), key + FP8_SCALE_SUFFIX: scale.reshape(())}
    return {key: t.contiguous()}


def merge_into_checkpoint(base: str | Path, adapters: list[tuple[LoraWeights, float]], out: str | Path, *,
                          single_file: bool = False, dtype: str = "official",
                          metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write ``base + sum(strength * adapter)`` in the official layout (or one file), shard by shard."""
    out = Path(out)
    files = checkpoint_files(base)
    meta = {"format": "pt", **(metadata or {})}
    known = set()
    for f in files:
        with safe_open(f, framework="pt") as sf:
            known |= {k.removesuffix(".weight") for k in sf.keys()}
    for w, _ in adapters:
        missing = sorted(set(w.modules) - known)
        if missing:
            raise AdapterError(f"the adapter adapts modules the base does not have: {missing[:3]}")
    if single_file:
        merged: dict[str, torch.Tensor] = {}
        for f in files:
            merged.update(_merged_shard(f, adapters, dtype))
        atomic_save_file(merged, out, meta)
        return out
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for i, f in enumerate(files, 1):
        name = f.name if len(files) > 1 else "model.safetensors"
        shard = _merged_shard(f, adapters, dtype)
        atomic_save_file(shard, out / name, meta)
        weight_map.update({k: name for k in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
        del shard
    if len(files) > 1:
        index = {"metadata": {"total_size": total, **(metadata or {})}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2))
    cfg = Path(base) / CONFIG_NAME if Path(base).is_dir() else Path(base).parent / CONFIG_NAME
    if cfg.is_file():
        atomic_write_text(out / CONFIG_NAME, cfg.read_text())
    return out
