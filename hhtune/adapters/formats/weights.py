"""The in-memory form every adapter format converts through: module path -> (A, B, alpha), plus metadata.

``<path>`` is the official module path (``block.layers.4.attention.linear_qkv``,
``adapter.audio_embedder``). A sandwich (expert) module's ``B`` is held stacked like the
official weight, ``[3 * out, r]`` in the order video, audio, text, with zero blocks for
the experts the adapter leaves alone; ``experts`` records which blocks are real. An
rsLoRA adapter is held with ``alpha * sqrt(r)`` so every consumer's ``alpha / r`` applies
the same update. DoRA magnitudes travel only in the PEFT format.

This is the base of :mod:`hhtune.adapters.formats`: it imports none of the format modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..settings import EXPERTS

ADAPTER_FORMAT_VERSION = 1
METADATA_KEY = "hhtune"


class AdapterError(ValueError):
    """A file that cannot be used as an adapter for this model, and why."""


class AdapterMetadata(BaseModel):
    """What an adapter file says about itself (stored in every safetensors header as JSON under ``"hhtune"``)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = ADAPTER_FORMAT_VERSION
    base_fingerprint: str | None = Field(None, description="base_model_id() of the base it was trained on")
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
    recommended_strength: float | None = Field(None, description="strength on the distilled model found by "
                                               "python -m hhtune.evaluate (absent in files written before it)")
    variant: str | None = Field(None, description="the published checkpoint it was trained on (base, distill, "
                                "sr_540p, sr_1080p; absent in files written before): an SR stage's adapter applies "
                                "to that SR stage only, a first stage's to base or distill")


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

    def copy(self) -> LoraWeights:
        """A shallow copy whose dicts (not tensors) may be changed."""
        return LoraWeights(dict(self.modules), self.metadata.model_copy(), dict(self.magnitudes), dict(self.experts),
                           self.fitted)  # fmt: skip


# --------------------------------------------------------------------------- editing by modality


def drop_experts(w: LoraWeights, drop: list[str]) -> LoraWeights:
    """``w`` without the named modalities: their sandwich ``B`` blocks zeroed and their embedder LoRAs removed."""
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
