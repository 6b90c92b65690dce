"""Model configuration with the official field names, and named presets.

The field names are those of the official ``ModelConfig`` (daVinci-MagiHuman
``inference/common/config.py``) so an official ``arch_config`` dict can be passed
straight in. Fields the official config derives (``num_heads_q``, ``num_heads_kv``)
are properties here, and fields that only steer the official runtime
(``params_dtype``, ``tread_config``, ``checkpoint_qk_layernorm_rope``) are accepted
and ignored so that official config files load unchanged.

Two settings of the official data proxy (``DataProxyConfig``) live here too, because they
change what the model computes: ``coords_style`` (the RoPE coordinates of audio and text)
and ``frame_receptive_field`` (the window of the ``local_attn_layers``). The published
checkpoints share one architecture; a *variant* (:data:`hhtune.contract.Variant`) says
which of them a config describes, and :meth:`ModelConfig.preset` / :meth:`with_variant`
apply what the super-resolution stages change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..contract import PRESETS, SR_VARIANTS, VARIANTS

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

assert tuple(_PRESETS) == PRESETS, "hhtune.contract.Preset names the presets defined here"


def _sr_1080p_local_layers(num_layers: int) -> list[int]:
    """The local layers of the 1080p SR model: every fourth layer global, except in the last fifth, which is all
    local. For 40 layers that is the official ``SR2_1080`` override (``post_override_config``): all but 3, 7, ...,
    31, so 32 of 40; the tiny preset gets all but layer 3."""
    tail = num_layers - num_layers // 5
    return [i for i in range(num_layers) if i % 4 != 3 or i >= tail]


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
    local_attn_layers: list[int] = Field(
        default_factory=list, description="layers where a video frame attends to video frames within "
        "frame_receptive_field latent frames (and to all audio and text); audio and text attend globally")
    frame_receptive_field: int = Field(11, ge=0, description="half-width of the local window, in latent frames")
    coords_style: Literal["v1", "v2"] = Field(
        "v2", description="RoPE coordinates of audio and text: v2 (base, distill) or v1 (the SR models)")

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
        return self

    @property
    def sr_variant(self) -> str | None:
        """The super-resolution variant this config describes (``v1`` coords), else ``None``."""
        if self.coords_style != "v1":
            return None
        return "sr_1080p" if self.local_attn_layers else "sr_540p"

    def with_variant(self, variant: str) -> ModelConfig:
        """This architecture as the published ``variant`` (:data:`hhtune.contract.Variant`) runs it.

        ``base`` and ``distill`` use v2 coordinates and global attention; ``sr_540p`` v1 coordinates;
        ``sr_1080p`` v1 coordinates and local attention in the official layers (32 of 40 for 15B).
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown model variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        # The official SR data proxy uses coords "v1" (``video_generate.py``); only the 1080p SR model
        # has local layers, with the official window (the ``frame_receptive_field`` default).
        local = _sr_1080p_local_layers(self.num_layers) if variant == "sr_1080p" else []
        return self.model_copy(update={"coords_style": "v1" if variant in SR_VARIANTS else "v2",
                                       "local_attn_layers": local})

    @property
    def num_heads_q(self) -> int:
        """Number of query heads (``hidden_size // head_dim``)."""
        return self.hidden_size // self.head_dim

    @property
    def num_heads_kv(self) -> int:
        """Number of key/value heads."""
        return self.num_query_groups

    @property
    def q_width(self) -> int:
        """Width of the queries of all heads (``num_heads_q * head_dim``)."""
        return self.num_heads_q * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the keys (and of the values) of all key/value heads."""
        return self.num_heads_kv * self.head_dim

    @property
    def gate_width(self) -> int:
        """Width of the attention gate: one logit per query head, 0 without gating."""
        return self.num_heads_q if self.enable_attn_gating else 0

    @property
    def qkv_width(self) -> int:
        """Output width of ``linear_qkv``: queries, keys, values and the gate."""
        return self.q_width + 2 * self.kv_width + self.gate_width

    def mlp_width(self, layer: int) -> int:
        """Inner MLP width of ``layer``: 4x hidden for GELU7, 8/3x hidden (down to a multiple of 4) for SwiGLU7."""
        if layer in self.gelu7_layers:
            return self.hidden_size * 4
        return int(self.hidden_size * 4 * 2 / 3) // 4 * 4

    def linear_features(self, layer: int) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of the four block linears of ``layer`` (SwiGLU7 doubles ``up_gate_proj``)."""
        hidden, inner = self.hidden_size, self.mlp_width(layer)
        up = inner if layer in self.gelu7_layers else 2 * inner
        return {"linear_qkv": (hidden, self.qkv_width), "linear_proj": (self.q_width, hidden),
                "up_gate_proj": (hidden, up), "down_proj": (inner, hidden)}  # fmt: skip

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
    def preset(cls, name: str, variant: str = "base") -> ModelConfig:
        """Return a named preset: ``"15b"`` (published shapes), ``"mid"`` (benchmarks) or ``"tiny"`` (tests),
        as the checkpoint ``variant`` runs it (:meth:`with_variant`; e.g. ``preset("tiny", "sr_1080p")``)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown model preset {name!r}; allowed: {sorted(_PRESETS)}")
        config = cls(**_PRESETS[name])
        return config if variant == "base" else config.with_variant(variant)

    @classmethod
    def preset_names(cls) -> list[str]:
        """Names accepted by :meth:`preset`."""
        return sorted(_PRESETS)
