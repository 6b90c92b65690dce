"""Merging adapters into a base checkpoint, tensor by tensor, in the official layout.

``W' = W + sum(strength * alpha / r * B @ A)`` for every adapted linear. Each output file's
header is computed from the base's headers first, then tensors are streamed: adapted ones
are read, merged a block of rows at a time in fp32 and written; unchanged ones are copied
byte for byte. Host memory is about one tensor (plus the adapters), never a shard or a
model, and every file appears under its final name only when complete; a merged folder
appears only when every shard and the index are written.

Output dtypes (``policy``):

* ``"official"`` - every tensor keeps the base's dtype (bf16 block linears, fp32 embedders,
  norms and buffers); an FP8 base is dequantised to bf16.
* ``"bf16"`` / ``"fp16"`` / ``"fp32"`` - every floating tensor in that dtype (single-file variants).
* ``"fp8"`` - the bf16 block linears as ``float8_e4m3fn`` with a per-tensor ``<key>.__fp8_scale``
  (amax / 448, as the community FP8 checkpoints), everything else as ``"official"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ..adapters.formats.weights import AdapterError, LoraWeights
from ..io import atomic_dir, atomic_write_text
from ..model.checkpoint import CONFIG_NAME, FP8_SCALE_SUFFIX, INDEX_NAME, SINGLE_NAME, checkpoint_files, read_shapes
from ._stream import DTYPES, Entry, RawCopy, read_entries, read_tensor, tensor_chunks, write_streaming

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
POLICIES = ("official", "bf16", "fp16", "fp32", "fp8")
_ROWS = 1024


def merge_into_checkpoint(base: str | Path, adapters: list[tuple[LoraWeights, float]], out: str | Path, *,
                          single_file: bool = False, policy: str = "official",
                          metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write ``base + sum(strength * adapter)`` as an official-layout folder (or one ``.safetensors`` file).

    The folder mirrors the base's shards (same names and keys) with ``model.safetensors.index.json``
    and the base's ``hhtune_config.json``; ``metadata`` goes into every header and the index.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown merge dtype policy {policy!r}; allowed: {', '.join(POLICIES)}")
    files = checkpoint_files(base)
    _validate(read_shapes(base), adapters)
    meta = {"format": "pt", **(metadata or {})}
    out = Path(out)
    if single_file:
        plans = [_plan(f, adapters, policy) for f in files]
        layout = [e for entries, _ in plans for e in entries]
        return write_streaming(out, layout, (item for _, data in plans for item in data()), meta)
    cfg = Path(base) / CONFIG_NAME if Path(base).is_dir() else Path(base).parent / CONFIG_NAME
    with atomic_dir(out) as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        for f in files:
            name = f.name if len(files) > 1 else SINGLE_NAME
            layout, data = _plan(f, adapters, policy)
            write_streaming(tmp / name, layout, data(), meta)
            weight_map.update({e.key: name for e in layout})
            total += sum(e.nbytes for e in layout)
        if len(files) > 1:
            index = {"metadata": {"total_size": total, **(metadata or {})},
                     "weight_map": dict(sorted(weight_map.items()))}
            atomic_write_text(tmp / INDEX_NAME, json.dumps(index, indent=2))
        if cfg.is_file():
            atomic_write_text(tmp / CONFIG_NAME, cfg.read_text())
    return out


def _validate(shapes: dict[str, tuple[tuple[int, ...], str]], adapters: list[tuple[LoraWeights, float]]) -> None:
    """Every adapted module must be a 2-D weight of the base with the adapter's ``[out, in]``; no DoRA."""
    for w, _ in adapters:
        if w.magnitudes:
            raise AdapterError("DoRA adapters cannot be merged linearly at a strength; apply them with "
                               "hhtune.adapters.load")
        missing = sorted(p for p in w.modules if p + ".weight" not in shapes)
        if missing:
            raise AdapterError(f"the adapter adapts modules the base checkpoint does not have: {missing[:3]}")
        for p, (a, b, _) in sorted(w.modules.items()):
            shape = shapes[p + ".weight"][0]
            if shape != (b.shape[0], a.shape[1]):
                raise AdapterError(f"{p}: adapter delta {[b.shape[0], a.shape[1]]} does not "
                                   f"fit base weight {list(shape)}")


def _out_dtype(src: str, shape: tuple[int, ...], policy: str) -> str:
    official = "BF16" if src == "F8_E4M3" else src
    floating = DTYPES[official].is_floating_point
    if policy in ("bf16", "fp16", "fp32") and floating:
        return {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}[policy]
    if policy == "fp8" and official == "BF16" and len(shape) == 2:
        return "F8_E4M3"
    return official


def _plan(file: Path, adapters: list[tuple[LoraWeights, float]], policy: str):
    """The output entries of one base file and a generator of their bytes (read lazily, in order)."""
    entries, data_start = read_entries(file)
    layout: list[Entry] = []
    for e in entries:
        if e.key.endswith(FP8_SCALE_SUFFIX):
            continue  # rewritten (or dropped) with its weight
        dtype = _out_dtype(e.dtype, e.shape, policy)
        layout.append(Entry(e.key, dtype, e.shape))
        if dtype == "F8_E4M3":
            layout.append(Entry(e.key + FP8_SCALE_SUFFIX, "F32", ()))
    by_key = {e.key: e for e in entries}

    def data() -> Iterator[tuple[str, RawCopy | Iterator[memoryview]]]:
        for out in layout:
            if out.key.endswith(FP8_SCALE_SUFFIX):
                continue  # yielded right after its weight, below
            src = by_key[out.key]
            deltas = [(w, s) for w, s in adapters if out.key.removesuffix(".weight") in w.modules]
            if not deltas and out.dtype == src.dtype:
                yield out.key, RawCopy(file, data_start + src.begin, data_start + src.end)
                continue
            t = _read(file, data_start, src, by_key)
            if deltas:
                t = _add_deltas(out.key.removesuffix(".weight"), t, deltas)
            if out.dtype == "F8_E4M3":
                q, scale = _to_fp8(t)
                yield out.key, tensor_chunks(q)
                yield out.key + FP8_SCALE_SUFFIX, tensor_chunks(scale)
            else:
                yield out.key, tensor_chunks(t.to(DTYPES[out.dtype]))
            del t

    return layout, data


def _read(file: Path, data_start: int, e: Entry, by_key: dict[str, Entry]) -> torch.Tensor:
    """One base tensor; FP8 weights come back dequantised to bf16."""
    t = read_tensor(file, e, data_start)
    if t.dtype != FP8:
        return t
    if e.key + FP8_SCALE_SUFFIX not in by_key:
        raise AdapterError(f"FP8 tensor {e.key!r} has no {e.key + FP8_SCALE_SUFFIX!r} scale")
    s = read_tensor(file, by_key[e.key + FP8_SCALE_SUFFIX], data_start).float()
    s = s.reshape(-1, *([1] * (t.dim() - 1))) if s.numel() > 1 else s.reshape(())
    out = torch.empty(t.shape, dtype=torch.bfloat16)
    for i in range(0, t.shape[0], _ROWS):
        rows = slice(i, i + _ROWS)
        out[rows] = (t[rows].float() * (s[rows] if s.dim() else s)).to(torch.bfloat16)
    return out


def _add_deltas(path: str, t: torch.Tensor, deltas: list[tuple[LoraWeights, float]]) -> torch.Tensor:
    """``t += sum(strength * alpha/r * B @ A)`` in place (``t`` is a fresh copy), in fp32 a block of rows at a time.

    One fp32 buffer of ``_ROWS`` rows is reused for every block, so the temporaries stay
    small and are not re-allocated (and page-faulted) per block.
    """
    factors = [(strength * alpha / a.shape[0], a.float(), b) for w, strength in deltas
               for a, b, alpha in [w.modules[path]]]
    buf = torch.empty(min(_ROWS, t.shape[0]), t.shape[1], dtype=torch.float32)
    for i in range(0, t.shape[0], _ROWS):
        rows = t[i : i + _ROWS]
        block = buf[: rows.shape[0]]
        block.copy_(rows)
        for f, a, b in factors:
            block.addmm_(b[i : i + _ROWS].float(), a, alpha=f)
        rows.copy_(block)
    return t


def _to_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor ``float8_e4m3fn`` quantisation: ``q = t / scale``, ``scale = amax / 448``."""
    amax = max((float(t[i : i + _ROWS].abs().max()) for i in range(0, t.shape[0], _ROWS)), default=0.0)
    scale = torch.tensor(max(amax, 1e-12) / FP8_MAX, dtype=torch.float32)
    q = torch.empty(t.shape, dtype=FP8)
    for i in range(0, t.shape[0], _ROWS):
        q[i : i + _ROWS] = (t[i : i + _ROWS].float() / scale).to(FP8)
    return q, scale


__all__ = ["POLICIES", "merge_into_checkpoint"]
