"""Training recipes: YAML validated by pydantic, with dotted command-line overrides.

Every default lives here. A recipe file only states what differs; a typo or a bad
value fails before anything loads, with the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .adapters.settings import LoraSettings, adapted_layers
from .contract import PRESETS, SR_VARIANTS, Bucket, ComputeDtype, Preset, SrResolution, Variant
from .model.config import ModelConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(_Section):
    """Which transformer is trained and how it is held in memory."""

    checkpoint: str | None = Field(None,
                                   description="official-layout checkpoint folder; null = random init of `preset`")
    preset: Preset | None = Field(None, description="architecture when no checkpoint (or to check it)")
    variant: Variant = Field("distill", description="the checkpoint being trained: distill, base, or a "
                             "super-resolution stage (sr_540p, sr_1080p: the adapter learns the SR stage from the "
                             "dataset's sr_video_latents; README, Super-resolution LoRA)")
    eval_checkpoint: str | None = Field(None, description="distilled checkpoint the adapter is validated on")
    block_dtype: Literal["bf16", "fp32"] = Field("bf16", description="storage of frozen block linears")
    fp8_base: bool = Field(False, description="keep an FP8 checkpoint's frozen weights in FP8 (dequantised on the fly)")
    fp8_compute: bool = Field(False, description="with fp8_base: run the frozen forward GEMMs as FP8 matmuls "
                                                 "(torch._scaled_mm; CUDA sm89+ or a CPU build with the op)")
    gradient_checkpointing: bool = True
    compute_dtype: ComputeDtype = Field(
        "auto",
        description="block linears/attention: bf16 (official numerics), fp32, or auto (bf16 on CUDA, fp32 on CPU)"
    )
    attention: Literal["auto", "sdpa", "flex", "flash"] = Field(
        "auto",
        description="kernel of masked attention (ragged batches): auto (flash, else flex on CUDA; sdpa on CPU), "
        "sdpa (CPU only), flex, flash (flash-attn, CUDA)")
    compile: bool = Field(False, description="torch.compile each transformer layer (regional compilation)")
    blocks_to_swap: int = Field(0, ge=0, description="layers whose frozen weights live in host memory (block swap)")
    activation_offload: bool = Field(False, description="keep tensors saved for backward in host memory")
    ignore_memory_plan: bool = Field(False, description="train even when `python -m hhtune.plan` says it will not fit")
    init_seed: int = Field(0, description="seed of the random init when checkpoint is null")

    @model_validator(mode="after")
    def _need_one(self) -> ModelSection:
        if self.checkpoint is None and self.preset is None:
            presets = ", ".join(PRESETS)
            raise ValueError(f"set model.checkpoint (a checkpoint folder) or model.preset (one of {presets})")
        if self.fp8_compute and not self.fp8_base:
            raise ValueError("model.fp8_compute needs model.fp8_base: true (FP8 weights from an FP8 checkpoint)")
        return self


class DataSection(_Section):
    """The dataset built by data_prep and how batches are drawn from it."""

    dataset: str = Field(..., description="DATASET_DIR written by `python -m data_prep build`")
    batch_size: int = Field(1, ge=1, description="clips per micro-batch per process (same bucket)")
    num_workers: int | None = Field(None, ge=0, description="loader worker processes; null = min(4, CPU cores) "
                                    "on CUDA, 0 on CPU (where workers would compete with the step for cores)")
    repeat: int = Field(1, ge=1, description="passes over the dataset per epoch (small datasets)")
    sr_crop: list[int] | None = Field(
        None, description="SR variants: train on a random [height, width] window (pixels, multiples of 32) of each "
        "high-resolution clip, all frames, instead of the whole frame; null = whole frames")

    @model_validator(mode="after")
    def _crop_in_patches(self) -> DataSection:
        crop = self.sr_crop
        if crop is not None and (len(crop) != 2 or any(side < 32 or side % 32 for side in crop)):
            raise ValueError(f"data.sr_crop {self.sr_crop}: [height, width], each side a positive multiple of 32 "
                             "pixels (whole 2x2 latent patches)")
        return self

    def workers(self, device_type: str, cpus: int) -> int:
        """Worker processes for a run on ``device_type`` with ``cpus`` host cores: ``num_workers`` or its default."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, cpus) if device_type == "cuda" else 0


class LossSection(_Section):
    """The flow-matching objective."""

    video_weight: float = Field(1.0, ge=0)
    audio_weight: float = Field(1.0, ge=0)
    sigma_distribution: Literal["uniform", "logit_normal"] = "uniform"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = Field(1.0, gt=0)
    shift: float = Field(5.0, gt=0, description="timestep shift of the model's schedule")
    speech_weight: float = Field(1.0, ge=1.0, description="loss multiplier on spoken frames (1 = off)")
    i2v_probability: float = Field(0.0, ge=0, le=1, description="share of samples trained as image-to-video")
    caption_dropout: float | None = Field(None, ge=0, le=1, description="null = 0.1 for base, 0 for distill")
    mouth_weight: float = Field(1.0, ge=1.0, description="loss multiplier on the video latents of the mouth (1 = off); "
                                "needs the dataset's mouth_boxes (data config mouth_regions: true)")
    mouth_weight_on: Literal["spoken", "always"] = Field(
        "spoken", description="spoken: only on latent frames where someone speaks (the speech mask); always: on "
        "every frame with a face")
    # -- audio noise and modality balance (README: "Voice, accent and lip-sync adapters") --
    audio_sigma: Literal["tied", "independent"] = Field(
        "tied", description="tied: audio is noised at the video's sigma, as both samplers do; independent: audio "
        "draws its own sigma from the audio_* settings below")
    audio_sigma_distribution: Literal["uniform", "logit_normal"] | None = Field(
        None, description="with audio_sigma: independent; null = sigma_distribution")
    audio_logit_normal_mean: float | None = Field(None, description="null = logit_normal_mean")
    audio_logit_normal_std: float | None = Field(None, gt=0, description="null = logit_normal_std")
    audio_shift: float | None = Field(None, gt=0, description="null = shift")
    balance: Literal["none", "ema"] = Field(
        "none", description="ema: each modality's loss is divided by its bias-corrected running mean")
    balance_decay: float = Field(0.99, gt=0, lt=1, description="decay of the running means of balance: ema")

    @model_validator(mode="after")
    def _audio_settings_need_independent(self) -> LossSection:
        stray = [f"loss.audio_{k}" for k in _AUDIO_SIGMA_KEYS if getattr(self, f"audio_{k}") is not None]
        if stray and self.audio_sigma == "tied":
            raise ValueError(f"{', '.join(stray)} set with loss.audio_sigma: tied, which noises audio at the video's "
                             "sigma and would ignore it; set loss.audio_sigma: independent or remove it")
        return self

    def sigma_settings(self, modality: Literal["video", "audio"]) -> tuple[str, float, float, float]:
        """``(distribution, logit-normal mean, logit-normal std, shift)`` of one modality's training sigma."""
        video = (self.sigma_distribution, self.logit_normal_mean, self.logit_normal_std, self.shift)
        if modality == "video":
            return video
        audio = (getattr(self, f"audio_{k}") for k in _AUDIO_SIGMA_KEYS)
        return tuple(v if a is None else a for a, v in zip(audio, video))  # type: ignore[return-value]


#: The audio sigma settings of :class:`LossSection`, ``audio_<key>``, each defaulting to ``<key>``.
_AUDIO_SIGMA_KEYS = ("sigma_distribution", "logit_normal_mean", "logit_normal_std", "shift")


class OptimizerSection(_Section):
    """AdamW and the learning-rate schedule."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)
    eight_bit: bool = Field(False, description="bitsandbytes AdamW8bit (CUDA only)")
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainSection(_Section):
    """Length, batch arithmetic and numerics of the run."""

    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    deterministic: bool = Field(False,
                                description="deterministic kernels (torch.use_deterministic_algorithms): bit-exact "
                                "resume on CUDA, somewhat slower")
    max_consecutive_nonfinite: int = Field(5, ge=1, description="stop after this many NaN/inf losses in a row")
    output_dir: str = Field("runs/hhtune", description="RUN_DIR: checkpoints, samples, adapter, logs")


class CheckpointingSection(_Section):
    """Resumable training state."""

    every_steps: int = Field(250, ge=1)
    keep_last: int = Field(3, ge=1)
    resume: bool = Field(True, description="continue from the newest checkpoint in RUN_DIR")
    allow_changed: list[str] = Field(default_factory=list, description="fingerprinted keys a resume may change "
                                     "(dotted recipe keys or sections, world_size, dataset.fingerprint)")


class ValidationSection(_Section):
    """Samples rendered during training with the 8-step distilled sampler, and an optional super-resolution stage."""

    every_steps: int | None = Field(None, ge=1, description="null = only at the end")
    at_end: bool = True
    prompts: list[str] | Literal["auto"] = Field(
        default_factory=list, description="prompts in the official format (description, Dialogue:, Background Sound:), "
        "or 'auto': the captions of `auto_clips` dataset clips held out of training")
    auto_clips: int = Field(3, ge=1, description="validation.prompts: auto: clips held out for their captions")
    reference_images: list[str] = Field(default_factory=list)
    seconds: float = Field(2.0, gt=0)
    aspect: Bucket = "16:9"
    base_resolution: int = Field(256, ge=32)
    seed: int = 1234
    encoders: str | None = Field(None, description="folder of the VAEs/text encoder (EncoderPaths), or 'tiny'")
    acoustic_model: str | None = None
    vae_tiling: bool = Field(False, description="decode the video VAE in tiles (less memory at high resolution)")
    offload_model: bool = Field(False, description="move the transformer to the CPU while the VAEs decode")
    sr: SrResolution | None = Field(None, description="render through a super-resolution stage after the first, "
                                    "unguided as the official SR examples: clips and stills at the delivered size "
                                    "(540p or 1080p); null = base size only")
    sr_model: str | None = Field(None, description="with sr: the SR checkpoint folder (540p_sr/ or 1080p_sr/), or a "
                                 "preset name for a random one (tests)")
    sr_adapter: str | None = Field(None, description="with sr: an adapter for the SR stage (the trained one applies "
                                   "to the first stage)")

    @model_validator(mode="after")
    def _sr_needs_its_model(self) -> ValidationSection:
        if (self.sr is None) != (self.sr_model is None):
            raise ValueError("validation.sr and validation.sr_model go together: the SR resolution and the SR "
                             "checkpoint folder (540p_sr/ or 1080p_sr/)")
        if self.sr is None and self.sr_adapter is not None:
            raise ValueError("validation.sr_adapter needs validation.sr")
        return self


class LoggingSection(_Section):
    """Where metrics go."""

    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "hhtune"
    run_name: str | None = None
    every_steps: int = Field(1, ge=1)


class ExportSection(_Section):
    """Adapter files written at the end of the run."""

    formats: list[Literal["peft", "wan2gp", "comfyui", "kohya", "merged", "merged_single", "merged_fp8"]] = Field(
        default_factory=lambda: ["peft", "comfyui"]
    )
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    trigger_words: list[str] = Field(default_factory=list)


class Recipe(_Section):
    """A whole training recipe."""

    model: ModelSection
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataSection
    loss: LossSection = Field(default_factory=LossSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    train: TrainSection = Field(default_factory=TrainSection)
    checkpointing: CheckpointingSection = Field(default_factory=CheckpointingSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    export: ExportSection = Field(default_factory=ExportSection)

    @model_validator(mode="after")
    def _lora_fits_the_preset(self) -> Recipe:
        cfg = self.preset_config()
        if cfg is not None:
            adapted_layers(cfg, self.lora)  # raises naming the allowed layers
        if self.data.sr_crop is not None and not self.trains_sr:
            raise ValueError(f"data.sr_crop crops the high-resolution clips of a super-resolution run, but "
                             f"model.variant is {self.model.variant!r}: set model.variant to one of "
                             f"{', '.join(SR_VARIANTS)} or remove data.sr_crop")  # fmt: skip
        return self

    @property
    def caption_dropout(self) -> float:
        """Caption dropout, defaulting by variant (CFG needs it on the base model)."""
        if self.loss.caption_dropout is not None:
            return self.loss.caption_dropout
        return 0.1 if self.model.variant == "base" else 0.0

    @property
    def trains_sr(self) -> bool:
        """Whether the run trains a super-resolution stage (``model.variant`` sr_540p or sr_1080p)."""
        return self.model.variant in SR_VARIANTS

    def preset_config(self) -> ModelConfig | None:
        """The preset's config as ``model.variant`` runs it, when a preset is named."""
        return ModelConfig.preset(self.model.preset, self.model.variant) if self.model.preset else None

    def hash(self) -> str:
        """Stable hash of the resolved recipe (for adapter metadata)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names every bad key."""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``section.key=value`` overrides and validate.

    Relative paths inside the recipe stay relative to the working directory (the
    README runs everything from the repository root).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        _apply_override(data, item)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe dict, turning pydantic's errors into one message per bad key."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_errors(e, source)) from None


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=200)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise RecipeError(f"override {item!r}: the key must be dotted, e.g. lora.rank=32")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def format_errors(error: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """One line per problem: dotted key, the value given, and what is allowed (keys looked up from ``root``)."""
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root or Recipe, loc[:-1])
            lines.append(f"  {key}: unknown key; allowed keys here: {', '.join(allowed)}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            lines.append(f"  {key} = {err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)


def _allowed_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return sorted(cls.model_fields)


def recipe_table(recipe: Recipe) -> list[tuple[str, str]]:
    """The resolved recipe flattened to ``(dotted key, value)`` rows for printing."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            rows.append((prefix, json.dumps(value)))

    walk("", recipe.model_dump(mode="json"))
    return rows
