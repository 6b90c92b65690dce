"""LoRA on the sandwich layers' modality experts, as a PEFT custom layer.

A sandwich linear (:class:`~hhtune.model.transformer.ExpertLinear`) holds three experts
stacked along the output dim (video, audio, text) and routes each modality's tokens
through its own expert. :class:`LoraExpertLinear` adapts a chosen subset of the experts:
one ``lora_A [r, in]`` shared by the adapted experts and one ``lora_B_<expert> [out, r]``
per adapted expert, so the delta of the stacked weight is ``[B_video; B_audio; B_text] @ A``
with zero blocks for the experts left alone. That is Wan2GP's own layout (it splits the
stacked ``lora_B`` per expert and shares ``lora_A``), and the musubi-tuner LoRA that adds
one update to every expert is the special case ``B_video = B_audio = B_text``.

PEFT still owns the adapter: it is registered through ``LoraConfig._register_custom_module``,
so ``save_pretrained``, ``set_peft_model_state_dict``, ``set_scale``, ``merge_and_unload`` and
stacking work as for plain linears. The state-dict keys are
``<path>.lora_A.weight`` and ``<path>.lora_B_<expert>.weight`` (one module dict per expert,
so the adapter name stays where PEFT puts it); which experts an adapter has is therefore
read from its own keys. Per-expert strengths (on top of PEFT's strength)
are set with :func:`set_expert_strengths`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from ..model.linears import ExpertLinear, Segments
from .settings import EXPERTS


class LoraExpertLinear(ExpertLinear, LoraLayer):
    """A PEFT LoRA layer around an :class:`ExpertLinear`; ``experts`` (class attribute) says which experts adapt.

    It subclasses ``ExpertLinear`` only so the model's blocks keep passing it the modality
    segments; it holds no weight of its own (``ExpertLinear.__init__`` is not run).
    """

    experts: tuple[str, ...] = EXPERTS
    adapter_layer_names = ("lora_A", "lora_B_video", "lora_B_audio", "lora_B_text")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs: Any) -> None:  # fmt: skip
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.expert_strength: dict[str, dict[str, float]] = {}
        for e in EXPERTS:
            setattr(self, f"lora_B_{e}", nn.ModuleDict({}))
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:  # noqa: ARG002 -- PEFT passes extra options
        """Create adapter ``adapter_name``: shared ``A``, one ``B`` per expert named by ``config``'s registration."""
        if config.use_dora:
            raise ValueError("DoRA is not supported on the sandwich expert layers; set lora.use_dora: false")
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        experts = config_experts(config)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        for e in experts:
            self._b(e)[adapter_name] = nn.Linear(r, self.out_features, bias=False)
        self.lora_bias[adapter_name] = False
        self.use_dora[adapter_name] = False
        self.use_rslora[adapter_name] = config.use_rslora
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.expert_strength[adapter_name] = {e: 1.0 for e in experts}
        if config.init_lora_weights:
            self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """Kaiming-uniform (PEFT's default) or gaussian ``A``, zero ``B``: the adapter starts as the identity."""
        if adapter_name not in self.lora_A:
            return
        a = self.lora_A[adapter_name].weight
        if init_lora_weights == "gaussian":
            nn.init.normal_(a, std=1 / self.r[adapter_name])
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        for e in EXPERTS:
            if adapter_name in self._b(e):
                nn.init.zeros_(self._b(e)[adapter_name].weight)

    # -- maths -------------------------------------------------------------------

    def _b(self, expert: str) -> nn.ModuleDict:
        return getattr(self, f"lora_B_{expert}")

    def adapter_experts(self, adapter: str) -> tuple[str, ...]:
        """The experts ``adapter`` adapts in this layer."""
        return tuple(e for e in EXPERTS if adapter in self._b(e))

    def _factors(self, adapter: str) -> list[tuple[int, float, nn.Linear]]:
        """``(expert index, scale, B)`` of every expert of ``adapter`` with a non-zero strength."""
        strengths = self.expert_strength[adapter]
        out = []
        for e in self.adapter_experts(adapter):
            s = self.scaling[adapter] * strengths.get(e, 1.0)
            if s != 0:
                out.append((EXPERTS.index(e), s, self._b(e)[adapter]))
        return out

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The stacked ``[3 * out, in]`` delta of ``adapter`` (zero blocks for experts it does not adapt), fp32."""
        a = self.lora_A[adapter].weight.float()
        delta = torch.zeros(len(EXPERTS) * self.out_features, self.in_features, device=a.device)
        for i, s, b in self._factors(adapter):
            delta[i * self.out_features : (i + 1) * self.out_features] = (b.weight.float() @ a) * s
        return delta

    def forward(self, x: torch.Tensor, segments: Segments, *args: Any, **kwargs: Any) -> torch.Tensor:  # noqa: ARG002 -- PEFT calls with its own extras
        result = self.base_layer(x, segments)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return result
        if self.merged:
            return result
        xs, parts = segments.split(x), list(segments.split(result))
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            a, drop = self.lora_A[adapter], self.lora_dropout[adapter]
            for i, s, b in self._factors(adapter):
                if xs[i].shape[1] == 0:
                    continue
                delta = b(a(drop(xs[i].to(a.weight.dtype)))) * s
                parts[i] = parts[i] + delta.to(result.dtype)  # other experts' rows stay bit-identical
        return torch.cat(parts, dim=1)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the deltas into the stacked bf16 weight (what a merged official checkpoint holds)."""
        weight = self.get_base_layer().weight
        for adapter in adapter_names or list(self.active_adapters):
            if adapter not in self.lora_A:
                continue
            merged = weight.data.float() + self.get_delta_weight(adapter).to(weight.device)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights; the adapter {adapter} seems to be broken")
            weight.data = merged.to(weight.dtype)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract the merged deltas again (up to the weight dtype's rounding, as PEFT's own unmerge)."""
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            weight.data = (weight.data.float() - self.get_delta_weight(adapter).to(weight.device)).to(weight.dtype)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def expert_layer_class(experts: list[str] | tuple[str, ...]) -> type[LoraExpertLinear]:
    """A :class:`LoraExpertLinear` subclass adapting ``experts`` (registered per ``LoraConfig``)."""
    bad = [e for e in experts if e not in EXPERTS]
    if bad or not experts:
        raise ValueError(f"experts {list(experts)} must be a non-empty subset of {list(EXPERTS)}")
    chosen = tuple(e for e in EXPERTS if e in experts)
    return type(f"LoraExpertLinear_{'_'.join(chosen)}", (LoraExpertLinear,), {"experts": chosen})


def register_experts(config: LoraConfig, experts: list[str] | tuple[str, ...]) -> LoraConfig:
    """Register the expert LoRA layer for ``experts`` on ``config`` (needed before PEFT builds the adapter)."""
    config._register_custom_module({ExpertLinear: expert_layer_class(experts)})
    return config


def config_experts(config: LoraConfig) -> tuple[str, ...]:
    """The experts registered on ``config`` (all three when none were)."""
    cls = (config._custom_modules or {}).get(ExpertLinear)
    return cls.experts if cls is not None else EXPERTS


def set_expert_strengths(model: nn.Module, adapter_name: str, strengths: dict[str, float]) -> None:
    """Multiply ``adapter_name``'s expert deltas by a strength per modality (``{"audio": 0.5}``); others keep theirs."""
    bad = [e for e in strengths if e not in EXPERTS]
    if bad:
        raise ValueError(f"unknown modality {bad}: allowed {list(EXPERTS)}")
    for module in model.modules():
        if isinstance(module, LoraExpertLinear) and adapter_name in module.expert_strength:
            module.expert_strength[adapter_name].update({k: float(v) for k, v in strengths.items()})
