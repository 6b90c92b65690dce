"""What a LoRA adapts (the recipe's ``lora`` section): the modules that selects and how many parameters train.

By default the four block linears (``linear_qkv``, ``linear_proj``, ``up_gate_proj``,
``down_proj``) of the shared layers (4-35 on the 15B model) are adapted.

* ``layers: all`` (or a list naming sandwich layers, 0-3 and 36-39 on 15B) also adapts the
  sandwich layers' modality experts, through the PEFT custom layer of
  :mod:`hhtune.adapters.experts`; ``experts`` picks which of video, audio and text train.
* ``embedders`` adds the per-modality input projections ``adapter.<m>_embedder``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..model.config import ModelConfig

TargetName = Literal["linear_qkv", "linear_proj", "up_gate_proj", "down_proj"]
Modality = Literal["video", "audio", "text"]
EXPERTS: tuple[str, ...] = ("video", "audio", "text")  # the stacked order of a sandwich layer's experts
ALL_TARGETS: tuple[str, ...] = ("linear_qkv", "linear_proj", "up_gate_proj", "down_proj")
_PARENT = {"linear_qkv": "attention", "linear_proj": "attention", "up_gate_proj": "mlp", "down_proj": "mlp"}


class LoraSettings(BaseModel):
    """What to adapt and how (the recipe's ``lora`` section)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(32, ge=1, le=1024, description="LoRA rank r")
    alpha: float | None = Field(None, gt=0, description="scale numerator; default: equal to rank (scale 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[TargetName] = Field(default_factory=lambda: list(ALL_TARGETS))
    layers: list[int] | Literal["shared", "all"] = Field(
        "shared", description='"shared" (no sandwich layer), "all", or explicit layer indices (sandwich ones included)'
    )
    experts: list[Modality] = Field(default_factory=lambda: list(EXPERTS),
                                    description="which experts of the sandwich layers train")  # fmt: skip
    embedders: list[Modality] = Field(default_factory=list,
                                      description="input projections adapter.<m>_embedder to adapt")
    use_rslora: bool = Field(False, description="scale by alpha/sqrt(r) instead of alpha/r")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    init: Literal["default", "gaussian"] = Field("default", description="B=0 with kaiming (default) or gaussian A")

    @field_validator("targets")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"targets must name at least one of {list(ALL_TARGETS)}")
        return list(dict.fromkeys(v))

    @field_validator("experts")
    @classmethod
    def _some_expert(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"experts must name at least one of {list(EXPERTS)} (or leave the sandwich layers out)")
        return [e for e in EXPERTS if e in v]

    @field_validator("embedders")
    @classmethod
    def _ordered(cls, v: list[str]) -> list[str]:
        return [e for e in EXPERTS if e in v]

    @property
    def effective_alpha(self) -> float:
        """``alpha``, defaulting to the rank."""
        return float(self.alpha if self.alpha is not None else self.rank)


def adapted_layers(config: ModelConfig, settings: LoraSettings) -> list[int]:
    """Indices of the layers the settings adapt, validated against the model."""
    if settings.layers == "shared":
        return config.shared_layers
    if settings.layers == "all":
        layers = list(range(config.num_layers))
    else:
        bad = [i for i in settings.layers if not 0 <= i < config.num_layers]
        if bad:
            raise ValueError(
                f"lora.layers {bad} cannot be adapted: indices must be in 0..{config.num_layers - 1} "
                f'(layers {config.mm_layers} are the modality-expert sandwich layers); or use "shared" or "all"'
            )
        layers = sorted(set(settings.layers))
    if settings.use_dora and any(i in config.mm_layers for i in layers):
        raise ValueError(f"lora.use_dora cannot adapt the sandwich layers {config.mm_layers}: "
                         "leave them out of lora.layers")
    return layers


def target_module_names(config: ModelConfig, settings: LoraSettings) -> list[str]:
    """Fully qualified names of the modules to adapt, e.g. ``block.layers.4.attention.linear_qkv``."""
    blocks = [f"block.layers.{i}.{_PARENT[t]}.{t}" for i in adapted_layers(config, settings) for t in settings.targets]
    return blocks + [f"adapter.{m}_embedder" for m in settings.embedders]


def expected_trainable_parameters(config: ModelConfig, settings: LoraSettings) -> int:
    """``r * (in + out)`` summed over the adapted modules (DoRA adds one magnitude per output).

    A sandwich expert linear trains one shared ``A`` and one ``B`` per chosen expert:
    ``r * (in + len(experts) * out)``.
    """
    hidden = config.hidden_size
    total = 0
    for layer in adapted_layers(config, settings):
        dims = config.linear_features(layer)
        experts = len(settings.experts) if layer in config.mm_layers else 1
        for t in settings.targets:
            i, o = dims[t]
            total += settings.rank * (i + experts * o) + (o if settings.use_dora else 0)
    ins = {"video": config.video_in_channels, "audio": config.audio_in_channels, "text": config.text_in_channels}
    for m in settings.embedders:
        total += settings.rank * (ins[m] + hidden) + (hidden if settings.use_dora else 0)
    return total
