"""LoRA on the HappyHorse transformer, through PEFT.

By default the four block linears (``linear_qkv``, ``linear_proj``, ``up_gate_proj``,
``down_proj``) of the shared layers (4-35 on the 15B model) are adapted. The sandwich
layers hold three modality experts in one weight and are not plain linears, so PEFT
cannot adapt them; asking for them is an error that says so.
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .model import HappyHorseTransformer, ModelConfig

TargetName = Literal["linear_qkv", "linear_proj", "up_gate_proj", "down_proj"]
ALL_TARGETS: tuple[str, ...] = ("linear_qkv", "linear_proj", "up_gate_proj", "down_proj")
_PARENT = {"linear_qkv": "attention", "linear_proj": "attention", "up_gate_proj": "mlp", "down_proj": "mlp"}


class LoraSettings(BaseModel):
    """What to adapt and how (the recipe's ``lora`` section)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(32, ge=1, le=1024, description="LoRA rank r")
    alpha: float | None = Field(None, gt=0, description="scale numerator; default: equal to rank (scale 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[TargetName] = Field(default_factory=lambda: list(ALL_TARGETS))
    layers: list[int] | Literal["shared"] = Field("shared", description='"shared" or explicit shared-layer indices')
    use_rslora: bool = Field(False, description="scale by alpha/sqrt(r) instead of alpha/r")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    init: Literal["default", "gaussian"] = Field("default", description="B=0 with kaiming (default) or gaussian A")

    @field_validator("targets")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"targets must name at least one of {list(ALL_TARGETS)}")
        return list(dict.fromkeys(v))

    @property
    def effective_alpha(self) -> float:
        """``alpha``, defaulting to the rank."""
        return float(self.alpha if self.alpha is not None else self.rank)


def adapted_layers(config: ModelConfig, settings: LoraSettings) -> list[int]:
    """Indices of the layers the settings adapt, validated against the model."""
    if settings.layers == "shared":
        return config.shared_layers
    bad = [i for i in settings.layers if i not in config.shared_layers]
    if bad:
        raise ValueError(
            f"lora.layers {bad} cannot be adapted: layers {config.mm_layers} are modality-expert sandwich layers "
            f"and indices must be in 0..{config.num_layers - 1}; allowed: {config.shared_layers} or \"shared\""
        )
    return sorted(set(settings.layers))


def target_module_names(config: ModelConfig, settings: LoraSettings) -> list[str]:
    """Fully qualified names of the modules to adapt, e.g. ``block.layers.4.attention.linear_qkv``."""
    return [f"block.layers.{i}.{_PARENT[t]}.{t}" for i in adapted_layers(config, settings) for t in settings.targets]


def lora_config(config: ModelConfig, settings: LoraSettings) -> LoraConfig:
    """The PEFT ``LoraConfig`` for these settings (exact module names, so nothing else matches)."""
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.effective_alpha,
        lora_dropout=settings.dropout,
        target_modules=target_module_names(config, settings),
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        init_lora_weights=True if settings.init == "default" else "gaussian",
        bias="none",
    )


def add_lora(model: HappyHorseTransformer, settings: LoraSettings, adapter_name: str = "default") -> PeftModel:
    """Wrap ``model`` with a trainable LoRA adapter; every base parameter is frozen.

    LoRA weights are kept in fp32 (PEFT's default upcast) while the base stays in its
    official dtypes, so adapter updates are not lost to bf16 rounding.
    """
    peft_model = get_peft_model(model, lora_config(model.config, settings), adapter_name=adapter_name)
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)
    return peft_model


def trainable_parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_trainable_parameters(config: ModelConfig, settings: LoraSettings) -> int:
    """``r * (in + out)`` summed over the adapted modules (DoRA adds one magnitude per output)."""
    hidden, hd = config.hidden_size, config.head_dim
    q = config.num_heads_q * hd
    qkv_out = q + 2 * config.num_heads_kv * hd + (config.num_heads_q if config.enable_attn_gating else 0)
    total = 0
    for layer in adapted_layers(config, settings):
        gelu = layer in config.gelu7_layers
        inner = hidden * 4 if gelu else int(hidden * 4 * 2 / 3) // 4 * 4
        dims = {"linear_qkv": (hidden, qkv_out), "linear_proj": (q, hidden),
                "up_gate_proj": (hidden, inner if gelu else 2 * inner), "down_proj": (inner, hidden)}  # fmt: skip
        for t in settings.targets:
            i, o = dims[t]
            total += settings.rank * (i + o) + (o if settings.use_dora else 0)
    return total
