"""Adding a trainable LoRA to the HappyHorse transformer through PEFT, and counting what a model trains.

:func:`add_lora` wraps the model with the adapter :class:`~hhtune.adapters.settings.LoraSettings`
describe; the sandwich layers' experts get the custom layer of :mod:`hhtune.adapters.experts`.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ..model import HappyHorseTransformer, ModelConfig
from .compute import fp32_adapters
from .experts import register_experts
from .settings import LoraSettings, target_module_names


def lora_config(config: ModelConfig, settings: LoraSettings) -> LoraConfig:
    """The PEFT ``LoraConfig`` for these settings (exact module names, so nothing else matches).

    The sandwich layers' expert linears are adapted by the custom layer registered here.
    """
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.effective_alpha,
        lora_dropout=settings.dropout,
        target_modules=target_module_names(config, settings),
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        init_lora_weights=True if settings.init == "default" else "gaussian",
        bias="none",
    )
    return register_experts(config, settings.experts)


def add_lora(model: HappyHorseTransformer, settings: LoraSettings, adapter_name: str = "default") -> PeftModel:
    """Wrap ``model`` with a trainable LoRA adapter; every base parameter is frozen.

    LoRA weights are kept in fp32 (PEFT's default upcast) while the base stays in its
    official dtypes, so adapter updates are not lost to bf16 rounding.
    """
    with warnings.catch_warnings():  # PEFT warns about every custom-mapped layer type; ours is registered on purpose
        warnings.filterwarnings("ignore", message="Unsupported layer type .*ExpertLinear")
        peft_model = get_peft_model(model, lora_config(model.config, settings), adapter_name=adapter_name)
    fp32_adapters(peft_model, adapter_name, peft_model.peft_config[adapter_name].init_lora_weights)
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)
    return peft_model


def trainable_parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
