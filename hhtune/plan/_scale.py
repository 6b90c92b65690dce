"""A full-depth step from a trace of one layer of each kind.

Tracing fake tensors costs about a millisecond per op, so the 40 layers of the 15B model
(~65k ops with recompute) would take a minute. Layers of one kind (sandwich or shared,
GELU7 or SwiGLU7, post-norm, adapted or not) have the same shapes, so we trace one of each
kind plus one more layer, read what each layer's forward leaves alive, and add that for
the layers not traced. Local attention (the 1080p SR model's frame window) is a kind of its own: it
runs another attention path, and the reduced model keeps its local layers in range. The transient peak
above the saved activations (one layer's recompute and backward) does not grow with depth.
"""

from __future__ import annotations

from collections import Counter

from ..adapters.settings import LoraSettings, adapted_layers
from ..model import ModelConfig
from ._trace import StepShape, Trace, trace

LayerKind = tuple[bool, bool, bool, bool, bool, bool]  # sandwich, GELU7, post-norm, local, adapted, input needs grad


def _kinds(config: ModelConfig, lora: LoraSettings | None) -> list[LayerKind]:
    adapted = set(adapted_layers(config, lora)) if lora is not None else set()
    first = min(adapted, default=config.num_layers)  # layers before it save nothing for backward
    return [(i in config.mm_layers, i in config.gelu7_layers, i in config.post_norm_layers,
             i in config.local_attn_layers, i in adapted, i > first) for i in range(config.num_layers)]  # fmt: skip


def reduced_model(config: ModelConfig, lora: LoraSettings | None) -> tuple[ModelConfig, LoraSettings | None]:
    """One layer of each kind of ``config``, in order, then a copy of the last one.

    The last layer's retained bytes cannot be read (no layer starts after it), hence the copy.
    """
    kinds = list(dict.fromkeys(_kinds(config, lora)))
    layers = [*kinds, (*kinds[-1][:5], True)]
    pick = lambda k: [i for i, kind in enumerate(layers) if kind[k]]
    reduced = ModelConfig(**{**config.model_dump(), "num_layers": len(layers), "mm_layers": pick(0),
                             "gelu7_layers": pick(1), "post_norm_layers": pick(2),
                             "local_attn_layers": pick(3)})  # fmt: skip
    reduced_lora = lora.model_copy(update={"layers": pick(4)}) if lora is not None else None
    return reduced, reduced_lora


def scaled_trace(config: ModelConfig, lora: LoraSettings | None, shape: StepShape, *, training: bool,
                 fp8: bool = False, checkpointing: bool = False, activation_offload: bool = False,
                 full: bool = False, compute: str = "bf16") -> Trace:  # fmt: skip
    """:func:`trace` of the whole model, traced layer by layer (``full``) or scaled from a reduced model."""
    kw = {"training": training, "fp8": fp8, "checkpointing": checkpointing,
          "activation_offload": activation_offload, "compute": compute}
    if full:
        return trace(config, lora, shape, **kw)
    reduced, reduced_lora = reduced_model(config, lora)
    if reduced.num_layers >= config.num_layers:
        return trace(config, lora, shape, **kw)
    t = trace(reduced, reduced_lora, shape, **kw)
    if not training:
        return t
    kinds = _kinds(reduced, reduced_lora)
    per_kind: dict[LayerKind, int] = {}
    for i, kind in enumerate(kinds[:-1]):
        per_kind.setdefault(kind, t.layer_retained[i])
    counts_full, counts_reduced = Counter(_kinds(config, lora)), Counter(kinds)
    needed = {k for k in {*counts_full, *counts_reduced} if counts_full[k] != counts_reduced[k]}
    if needed - set(per_kind):  # a kind seen only as the last layer: trace everything
        return trace(config, lora, shape, **kw)
    extra = sum((counts_full[k] - counts_reduced[k]) * per_kind[k] for k in needed)
    return Trace(activations=t.activations + extra, peak=t.peak + extra, layer_retained={})
