"""Model configuration with the official field names, and named presets.

The field names are those of the official ``ModelConfig`` (daVinci-MagiHuman
``inference/common/config.py``) so an official ``arch_config`` dict can be passed
straight in. Fields the official config derives (``num_heads_q``, ``num_heads_kv``)
are properties here, and fields that only steer the official runtime
(``params_dtype``, ``tread_config``, ``checkpoint_qk_layernorm_rope``) are accepted
and ignored so that official config files load unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Official runtime-only keys we accept (so official configs load) but do not use.
_OFFICIAL_RUNTIME_KEYS = ("params_dtype", "tread_config", "checkpoint_qk_layernorm_rope", "num_heads_q", "num_heads_kv")

_PRESETS: dict[str, dict[str, Any]] = {
    # The published 15B single-stream model (base, distill and SR checkpoints share it).
    "15b": dict(
        num_layers=40,
        hidden_size=5120,
        head_dim=128,
        num_query_groups=8,
        video_in_channels=192,
        audio_in_channels=64,
        text_in_channels=3584,
        mm_layers=[0, 1, 2, 3, 36, 37, 38, 39],
        gelu7_layers=[0, 1, 2, 3],
    ),
    # A mid-size config for CPU benchmarks: real head_dim, a few layers.
    "mid": dict(
        num_layers=6,
        hidden_size=512,
        head_dim=128,
        num_query_groups=2,
        video_in_channels=192,
        audio_in_channels=64,
        text_in_channels=32,
        mm_layers=[0, 5],
        gelu7_layers=[0],
    ),
    # The config of the official parity fixture; used by tests and the CPU quick start.
    "tiny": dict(
        num_layers=8,
        hidden_size=64,
        head_dim=16,
        num_query_groups=2,
        video_in_channels=192,
        audio_in_channels=64,
        text_in_channels=32,
        mm_layers=[0, 1, 6, 7],
        gelu7_layers=[0, 1],
    ),
}


class ModelConfig(BaseModel):
    """Architecture of a HappyHorse single-stream transformer.

    Use :meth:`preset` for the published shapes (``"15b"``) or the test model
    (``"tiny"``); pass official field names to describe anything else.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(40, ge=1)
    hidden_size: int = Field(5120, ge=8)
    head_dim: int = Field(128, ge=8)
    num_query_groups: int = Field(8, ge=1, description="number of key/value heads (GQA groups)")
    video_in_channels: int = Field(192, ge=1, description="48 latent channels x 1x2x2 patch")
    audio_in_channels: int = Field(64, ge=1)
    text_in_channels: int = Field(3584, ge=1)
    mm_layers: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 36, 37, 38, 39])
    gelu7_layers: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    enable_attn_gating: bool = True
    activation_type: Literal["swiglu7"] = "swiglu7"
    post_norm_layers: list[int] = Field(default_factory=list)
    local_attn_layers: list[int] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _drop_official_runtime_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in _OFFICIAL_RUNTIME_KEYS}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of head_dim ({self.head_dim})")
        if self.num_heads_q % self.num_query_groups:
            raise ValueError(
                f"num_heads_q ({self.num_heads_q}) must be a multiple of num_query_groups ({self.num_query_groups})"
            )
        if self.head_dim % 8:
            raise ValueError(f"head_dim ({self.head_dim}) must be a multiple of 8 (3-axis Fourier RoPE)")
        for name in ("mm_layers", "gelu7_layers", "post_norm_layers", "local_attn_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"{name} has layer indices {bad} outside 0..{self.num_layers - 1}")
        if self.local_attn_layers:
            raise ValueError(
                "local_attn_layers is not supported: the published checkpoints use none "
                "(official default []); leave it empty"
            )
        return self

    @property
    def num_heads_q(self) -> int:
        """Number of query heads (``hidden_size // head_dim``)."""
        return self.hidden_size // self.head_dim

    @property
    def num_heads_kv(self) -> int:
        """Number of key/value heads."""
        return self.num_query_groups

    @property
    def shared_layers(self) -> list[int]:
        """Layers shared by all modalities (the default LoRA targets)."""
        return [i for i in range(self.num_layers) if i not in self.mm_layers]

    # PEFT reads ``model.config`` like a Hugging Face config (``.get``, ``.to_dict``).
    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read of a field (PEFT compatibility)."""
        return getattr(self, key, default)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (PEFT compatibility)."""
        return self.model_dump()

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """Return a named preset: ``"15b"`` (published shapes), ``"mid"`` (benchmarks) or ``"tiny"`` (tests)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown model preset {name!r}; allowed: {sorted(_PRESETS)}")
        return cls(**_PRESETS[name])

    @classmethod
    def preset_names(cls) -> list[str]:
        """Names accepted by :meth:`preset`."""
        return sorted(_PRESETS)
