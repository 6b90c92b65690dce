"""Single-file LoRA layouts: ComfyUI generic, kohya / musubi-tuner, and Wan2GP's bare official paths.

Every writer folds the scale into ``lora_B`` (``B' = alpha / r * B``) and writes
``alpha = r``: loaders disagree about a missing alpha (ComfyUI and mmgp use scale 1,
kohya-style trainers use alpha = rank, FastVideo reads only ``.lora_alpha`` and else
uses the rank), and with ``alpha = r`` written every one of them applies scale 1. The
original alphas go into the header (``hhtune_alphas``) so reading the file back restores
them (a loaded adapter trains on with its own rank and alpha).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ...io import atomic_save_file
from ..settings import EXPERTS
from .modelspec import modelspec_header
from .weights import AdapterError, LoraWeights

_ALPHAS_KEY = "hhtune_alphas"
_EXPERTS_KEY = "hhtune_experts"
_FITTED_KEY = "hhtune_fitted"

# (style, prefix, A suffix, B suffix): how each layout names one module's tensors
_STYLES = (
    ("comfyui", "diffusion_model.", ".lora_A.weight", ".lora_B.weight"),
    ("kohya", "lora_unet_", ".lora_down.weight", ".lora_up.weight"),
    ("wan2gp", "", ".lora_A.weight", ".lora_B.weight"),
)
_BARE = re.compile(r"^(block\.layers\.\d+\.(attention|mlp)\.[a-z_]+|adapter\.(video|audio|text)_embedder)$")
_KOHYA = re.compile(r"^block_layers_(\d+)_(attention|mlp)_([a-z_]+)$")
_KOHYA_EMBEDDER = re.compile(r"^adapter_(video|audio|text)_embedder$")


def _stem(style: str, path: str) -> str:
    if style == "comfyui":
        return f"diffusion_model.{path}"
    if style == "kohya":
        return "lora_unet_" + path.replace(".", "_")
    return path


def write_single(w: LoraWeights, path: Path, dtype: torch.dtype, style: str, drop_shared_copies: bool = False) -> Path:
    """Write ``w`` in ``style`` (``comfyui``, ``kohya``, ``wan2gp``) with the scale folded into ``B``.

    With ``drop_shared_copies`` (kohya), a sandwich module whose three expert blocks of ``B``
    are equal is written as one ``[out, r]`` update, as musubi-tuner holds it.
    """
    if w.magnitudes:
        raise AdapterError(f"a DoRA adapter carries magnitude vectors the {style} format "
                           "cannot hold; export it as peft")
    _, _, a_name, b_name = next(s for s in _STYLES if s[0] == style)
    tensors: dict[str, torch.Tensor] = {}
    alphas = {}
    experts = dict(w.experts)
    for p, (a, b, alpha) in sorted(w.modules.items()):
        r = a.shape[0]
        b = b.float() * (alpha / r)
        if drop_shared_copies and p in w.experts and len(w.experts[p]) == len(EXPERTS):
            blocks = b.chunk(len(EXPERTS))
            if all(torch.equal(blocks[0], x) for x in blocks[1:]):
                b = blocks[0]
                experts.pop(p)
        k = _stem(style, p)
        tensors[k + a_name] = a.to(dtype).contiguous()
        tensors[k + b_name] = b.to(dtype).contiguous()
        tensors[k + ".alpha"] = torch.tensor(float(r), dtype=torch.float32)
        alphas[p] = alpha
    header = {**modelspec_header(w, folded=True), "hhtune_adapter_format": style, _ALPHAS_KEY: json.dumps(alphas),
              _EXPERTS_KEY: json.dumps(experts), _FITTED_KEY: json.dumps(experts == w.experts)}  # fmt: skip
    atomic_save_file(tensors, path, header)
    return path


def read_single(path: Path, keys: list[str]) -> LoraWeights:
    """Read a single-file adapter in any of the layouts above (also musubi-tuner's MagiHuman LoRAs)."""
    state = load_file(path)
    for k, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AdapterError(f"{path}: tensor {k} holds NaN or infinite values; the file is broken (re-export it)")
    found: dict[str, tuple[str, str]] = {}  # module path -> (style, key stem)
    used: set[str] = set()
    for k in keys:
        style, stem = _classify(k)
        if style is None:
            continue
        module = _module_path(style, stem, k, str(path))
        if module in found and found[module] != (style, stem):
            other = found[module][1]
            raise AdapterError(
                f"{path}: module {module} appears twice, as {other} and {stem}: a file must name each module once "
                "(it mixes two key styles); keep one"
            )
        found[module] = (style, stem)
    w = LoraWeights()
    for module, (style, stem) in sorted(found.items()):
        _, _, a_suffix, b_suffix = next(s for s in _STYLES if s[0] == style)
        a_key, b_key, alpha_key = stem + a_suffix, stem + b_suffix, stem + ".alpha"
        if b_key not in state:
            raise AdapterError(f"{path}: {a_key} has no matching {b_key}")
        a = state[a_key]
        # no alpha: scale 1, as ComfyUI, mmgp and kohya (alpha = rank) all read it
        alpha = float(state[alpha_key]) if alpha_key in state else float(a.shape[0])
        if alpha == 0:
            alpha = float(a.shape[0])  # kohya / musubi-tuner: alpha 0 means "no scaling"
        w.modules[module] = (a, state[b_key], alpha)
        used |= {a_key, b_key, alpha_key}
    unknown = sorted(set(keys) - used)
    if unknown:
        raise AdapterError(
            f"{path}: key {unknown[0]} names no HappyHorse module this loader knows "
            f"({len(unknown)} such keys); known layouts: diffusion_model.<path>.lora_A/lora_B/alpha, "
            "lora_unet_<path>.lora_down/lora_up/alpha, <path>.lora_A/lora_B/alpha"
        )
    if not w.modules:
        raise AdapterError(f"{path} holds no LoRA weights")
    _restore_alphas(path, w)
    return w


def _classify(key: str) -> tuple[str | None, str]:
    for style, prefix, a_suffix, b_suffix in _STYLES:
        for suffix in (a_suffix, b_suffix):
            if key.endswith(suffix) and key.startswith(prefix):
                stem = key[: -len(suffix)]
                if style == "wan2gp" and not _BARE.match(stem):
                    continue
                return style, stem
    return None, key


def _module_path(style: str, stem: str, key: str, source: str) -> str:
    if style == "comfyui":
        return stem.removeprefix("diffusion_model.")
    if style == "wan2gp":
        return stem
    # kohya names replace every dot by "_", so the split is ambiguous in general; HappyHorse's adaptable
    # modules all sit at block.layers.N.(attention|mlp).<name> or adapter.<m>_embedder, which is unambiguous.
    body = stem.removeprefix("lora_unet_")
    if m := _KOHYA.match(body):
        return f"block.layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"
    if m := _KOHYA_EMBEDDER.match(body):
        return f"adapter.{m.group(1)}_embedder"
    raise AdapterError(f"{source}: kohya key {key} does not name a HappyHorse block or embedder module")


def _restore_alphas(path: Path, w: LoraWeights) -> None:
    """Undo the folded scale of an hhtune file (so the adapter keeps its own alpha) and restore its experts."""
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    raw = header.get(_ALPHAS_KEY)
    if not raw:
        return
    w.experts = {p: tuple(e) for p, e in json.loads(header.get(_EXPERTS_KEY) or "{}").items()}
    w.fitted = header.get(_FITTED_KEY) == "true"  # false: shared [out, r] updates still need the model's shapes
    alphas = json.loads(raw)
    for p, (a, b, alpha) in list(w.modules.items()):
        original = alphas.get(p)
        if original and alpha == a.shape[0] and original != alpha:
            w.modules[p] = (a, (b.float() / (original / a.shape[0])).to(b.dtype), float(original))
