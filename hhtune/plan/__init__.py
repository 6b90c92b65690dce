"""Memory plan: the peak device memory of a recipe's training step and validation, without weights.

With ``validation.sr`` the validation peak covers the SR stage too: the SR DiT and its forward at the delivered
size while the trained model waits on the host (one DiT on the device at a time), and the decode at that size.

``python -m hhtune.plan RECIPE.yaml [key=value ...] [--gpu-memory GB] [--world-size N] [--json]``

The activations come from running the real model code on fake tensors (see ``_trace``);
parameters, gradients and optimizer state from their sizes; the encoders from their
published parameter counts, in bf16. ``fits`` leaves 5% plus 0.5 GB for the CUDA context
and allocator fragmentation. :func:`recommend` searches, cheapest first, gradient
checkpointing, activation offload, an FP8 base (needs an FP8 checkpoint) and block swap.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass, field, replace

import torch

from ..adapters.settings import expected_trainable_parameters
from ..contract import (
    BUCKETS,
    TEXT_LENGTH,
    VIDEO_STRIDE,
    LatentShape,
    bucket_size,
    frames_for,
    nearest_bucket,
    sr_size,
)
from ..model import HappyHorseTransformer, ModelConfig
from ..model.placement import swapped_layers
from ..recipe import Recipe
from ._dataset import dataset_shapes
from ._scale import scaled_trace
from ._trace import StepShape

GB = 1024**3
HEADROOM_FRACTION, HEADROOM_GB = 0.05, 0.5
TEXT_ENCODER_PARAMS = 9.2e9  # T5Gemma-9B encoder
VIDEO_VAE_PARAMS = 0.70e9  # Wan2.2 VAE (48 channels, 4x16x16)
AUDIO_VAE_PARAMS = 0.157e9  # Stable Audio Open VAE


class PlanError(ValueError):
    """A plan that cannot be made; the message names the setting."""


@dataclass(frozen=True)
class MemorySettings:
    """The knobs the plan searches over."""

    gradient_checkpointing: bool
    activation_offload: bool = False
    fp8_base: bool = False
    blocks_to_swap: int = 0

    def overrides(self) -> list[str]:
        """The recipe overrides that select these settings."""
        return [f"model.{k}={str(v).lower()}" for k, v in asdict(self).items()]


@dataclass
class Plan:
    """Peak device memory (GB) of one process, by component."""

    settings: MemorySettings
    world_size: int
    train_shape: StepShape
    validation_shape: StepShape
    train_source: str  # where the training clip shape came from (dataset, flags or validation clip)
    components: dict[str, float]
    train_peak_gb: float
    validation_peak_gb: float
    prompt_encoding_gb: float
    gpu_memory_gb: float | None = None
    recommendation: Plan | None = field(default=None, repr=False)

    @property
    def peak_gb(self) -> float:
        """The larger of the training and the validation peak."""
        return max(self.train_peak_gb, self.validation_peak_gb)

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits ``gpu_memory_gb`` with headroom (None when no memory was given)."""
        if self.gpu_memory_gb is None:
            return None
        return needed_gb(self.peak_gb) <= self.gpu_memory_gb

    def to_json(self) -> dict:
        """The plan as plain data (``--json``)."""
        out = {"train_peak_gb": round(self.train_peak_gb, 2), "validation_peak_gb": round(self.validation_peak_gb, 2),
               "prompt_encoding_gb": round(self.prompt_encoding_gb, 2), "fits": self.fits,
               "gpu_memory_gb": self.gpu_memory_gb, "world_size": self.world_size, "settings": asdict(self.settings),
               "train_tokens": self.train_shape.tokens, "validation_tokens": self.validation_shape.tokens,
               "train_shape": {"latent": list(self.train_shape.video), "audio": self.train_shape.audio,
                               "text": self.train_shape.text, "batch": self.train_shape.batch,
                               "source": self.train_source},
               "components": {k: round(v, 3) for k, v in self.components.items()}}  # fmt: skip
        if self.recommendation is not None:
            out["recommendation"] = {"settings": asdict(self.recommendation.settings),
                                     "overrides": self.recommendation.settings.overrides(),
                                     "train_peak_gb": round(self.recommendation.train_peak_gb, 2),
                                     "validation_peak_gb": round(self.recommendation.validation_peak_gb, 2),
                                     }  # fmt: skip
        return out


def needed_gb(peak_gb: float) -> float:
    """Device memory a peak needs, with the headroom for context and fragmentation."""
    return peak_gb * (1 + HEADROOM_FRACTION) + HEADROOM_GB


def _clip_shape(seconds: float, aspect: str, resolution: int, batch: int) -> StepShape:
    if aspect not in BUCKETS:
        raise PlanError(f"unknown aspect {aspect!r}; allowed: {', '.join(BUCKETS)}")
    shape = LatentShape.from_pixels(*bucket_size(aspect, resolution), frames_for(seconds))
    t, h, w = shape.latent_frames, shape.latent_height, shape.latent_width
    if h % 2 or w % 2:
        raise PlanError(f"resolution {resolution} gives a {h}x{w} latent; the 2x2 patch needs both even: "
                        f"use a multiple of 32 (e.g. {resolution // 32 * 32} or "
                        f"{math.ceil(resolution / 32) * 32})")  # fmt: skip
    return StepShape(batch=batch, video=(t, h, w), audio=shape.frames, text=TEXT_LENGTH)  # prompts are padded


def training_shape(recipe: Recipe, *, seconds: float | None = None, resolution: int | None = None,
                   aspect: str | None = None) -> tuple[StepShape, str]:  # fmt: skip
    """The training micro-batch shape to plan for, and a line saying where it came from.

    Explicit ``seconds``/``resolution`` (``--seconds``/``--resolution``) win. Otherwise, when
    ``data.dataset`` exists, the dataset's bucket with the most tokens (its clips at their own
    frame count and size; text at the 640-token maximum). Otherwise the validation clip, said so.
    An SR run (``model.variant`` sr_540p/sr_1080p) trains on that bucket at the SR size
    (:func:`~hhtune.contract.sr_size`), cut to ``data.sr_crop``.
    """
    shape, source = _base_training_shape(recipe, seconds=seconds, resolution=resolution, aspect=aspect)
    if not recipe.trains_sr:
        return shape, source
    t, h, w = shape.video
    width, height = w * VIDEO_STRIDE[2], h * VIDEO_STRIDE[1]
    bucket = next((b for b in BUCKETS if bucket_size(b, min(width, height)) == (width, height)),
                  nearest_bucket(width, height, list(BUCKETS)))  # fmt: skip
    resolution_name = recipe.model.variant.removeprefix("sr_")
    sides = [side // stride for side, stride in zip(sr_size(bucket, min(width, height), resolution_name)[::-1],
                                                     VIDEO_STRIDE[1:])]  # fmt: skip
    crop = recipe.data.sr_crop
    if crop is not None:
        sides = [min(side, c // stride) for side, c, stride in zip(sides, crop, VIDEO_STRIDE[1:])]
    cut = f", cut to data.sr_crop {list(crop)}" if crop is not None else ""
    return replace(shape, video=(t, *sides)), f"{source}; at the {resolution_name} SR size{cut}"


def _base_training_shape(recipe: Recipe, *, seconds: float | None, resolution: int | None,
                         aspect: str | None) -> tuple[StepShape, str]:  # fmt: skip
    v, batch = recipe.validation, recipe.data.batch_size
    if seconds is None and resolution is None:
        try:
            found = dataset_shapes(recipe.data.dataset)
        except ValueError as e:
            raise PlanError(f"data.dataset: {e}") from None
        if found is not None:
            shapes = [_bucket_shape(f, h, w, batch) for f, h, w in found.buckets]
            best = max(shapes, key=lambda s: s.tokens)
            f, h, w = found.buckets[shapes.index(best)]
            return best, (f"dataset {found.path}: largest of {len(found.buckets)} bucket(s), {w}x{h} {f} frames "
                          f"(longest clip {found.longest_frames} frames, {found.clips} clips)")  # fmt: skip
    shape = _clip_shape(seconds or v.seconds, aspect or v.aspect, resolution or v.base_resolution, batch)
    if seconds is not None or resolution is not None:
        return shape, f"--seconds {seconds or v.seconds:g} --resolution {resolution or v.base_resolution}"
    return shape, (f"validation clip ({v.seconds:g} s, {v.base_resolution}p): no dataset at {recipe.data.dataset}; "
                   "pass --seconds and --resolution for the training clips")  # fmt: skip


def _sr_shape(seconds: float, aspect: str, resolution: int, sr: str) -> StepShape:
    """The SR stage's sample at the delivered size (``validation.sr``)."""
    shape = LatentShape.from_pixels(*sr_size(aspect, resolution, sr), frames_for(seconds))
    return StepShape(batch=1, video=(shape.latent_frames, shape.latent_height, shape.latent_width),
                     audio=shape.frames, text=TEXT_LENGTH)


def _bucket_shape(frames: int, height: int, width: int, batch: int) -> StepShape:
    """A dataset bucket as latent tokens (the contract's latent shape; text at its padded maximum)."""
    shape = LatentShape.from_pixels(width, height, frames)
    return StepShape(batch=batch, video=(shape.latent_frames, shape.latent_height, shape.latent_width),
                     audio=shape.frames, text=TEXT_LENGTH)


def _weight_bytes(config: ModelConfig, block_dtype: str, fp8: bool) -> tuple[int, list[int]]:
    """Bytes of the frozen weights outside the layers, and of each layer."""
    outside, layers = _weight_bytes_cached(config.model_dump_json(), block_dtype, fp8)
    return outside, list(layers)


@functools.lru_cache(maxsize=16)
def _weight_bytes_cached(config_json: str, block_dtype: str, fp8: bool) -> tuple[int, tuple[int, ...]]:
    with torch.device("meta"):
        model = HappyHorseTransformer(ModelConfig.model_validate_json(config_json))
    block = 1 if fp8 else 4 if block_dtype == "fp32" else 2

    def size(p: torch.Tensor) -> int:
        return p.numel() * (block if p.dtype == torch.bfloat16 else p.element_size())

    layers = tuple(sum(size(p) for p in layer.parameters()) for layer in model.block.layers)
    total = sum(size(p) for p in model.parameters())
    return total - sum(layers), layers


def _frozen_bytes(outside: int, layers: list[int], swapped: int, world_size: int) -> float:
    """Resident frozen weights: FSDP2 shards every layer (one gathered, the next prefetched);
    block swap keeps the last ``swapped`` layers on the host, the running one and the
    prefetched neighbour on the device."""
    if world_size > 1:
        return (outside + sum(layers)) / world_size + 2 * max(layers)
    host = layers[len(layers) - swapped :] if swapped else []
    on_device = max((a + b for a, b in itertools.pairwise(host)), default=sum(host))
    return outside + sum(layers) - sum(host) + on_device


def _vae_decode_workspace(shape: StepShape) -> int:
    """A rough, untraced bound of the Wan2.2 decoder's live activations for one causal chunk.

    Four output frames at full resolution, 256 channels, bf16, about four such buffers
    live at once (input, output, residual, cache), plus the decoded clip in fp32.
    """
    t, h, w = shape.video
    ft, fh, fw = VIDEO_STRIDE
    height, width, frames = h * fh, w * fw, (t - 1) * ft + 1
    return 4 * 256 * 4 * height * width * 2 + frames * 3 * height * width * 4


def plan_settings(recipe: Recipe, settings: MemorySettings, *, world_size: int = 1, seconds: float | None = None,
                  resolution: int | None = None,
                  aspect: str | None = None, full_trace: bool = False) -> Plan:  # fmt: skip
    """The plan of ``recipe`` with ``settings`` in place of its memory settings."""
    config = recipe.preset_config()
    if config is None:
        raise PlanError("the plan needs model.preset (15b, mid or tiny) to know the architecture; set it in the recipe")
    if world_size < 1:
        raise PlanError(f"--world-size must be at least 1, got {world_size}")
    try:
        swapped_layers(config.num_layers, settings.blocks_to_swap)
    except ValueError as e:
        raise PlanError(str(e)) from None
    if settings.blocks_to_swap and world_size > 1:
        raise PlanError("model.blocks_to_swap with FSDP (world size > 1) is not supported; shard or swap, not both")
    v = recipe.validation
    train_shape, train_source = training_shape(recipe, seconds=seconds, resolution=resolution, aspect=aspect)
    val_shape = _clip_shape(v.seconds, v.aspect, v.base_resolution, 1)
    kw = {"fp8": settings.fp8_base, "full": full_trace}
    step = scaled_trace(config, recipe.lora, train_shape, training=True, checkpointing=settings.gradient_checkpointing,
                        activation_offload=settings.activation_offload, **kw)  # fmt: skip
    sample = scaled_trace(config, recipe.lora, val_shape, training=False, **kw)
    sr_shape = _sr_shape(v.seconds, v.aspect, v.base_resolution, v.sr) if v.sr else None

    outside, layers = _weight_bytes(config, recipe.model.block_dtype, settings.fp8_base)
    frozen = _frozen_bytes(outside, layers, settings.blocks_to_swap, world_size)
    lora = expected_trainable_parameters(config, recipe.lora) * 4 / world_size
    optimizer = lora * (0.5 if recipe.optimizer.eight_bit else 2)
    eval_copy = (outside + sum(_weight_bytes(config, "bf16", False)[1])) if recipe.model.eval_checkpoint else 0
    real_encoders = recipe.model.preset == "15b"  # smaller presets pair with the tiny test encoders
    vaes = (VIDEO_VAE_PARAMS + AUDIO_VAE_PARAMS) * 2 * real_encoders
    decode = _vae_decode_workspace(sr_shape or val_shape) * real_encoders
    # validation.sr: the SR DiT (the same architecture, bf16) runs while the trained model waits on the host; the
    # optimizer state stays on the device
    sr_model = (outside + sum(_weight_bytes(config, "bf16", False)[1])) if sr_shape else 0
    sr_forward = (scaled_trace(config.with_variant(f"sr_{v.sr}"), recipe.lora, sr_shape, training=False, **kw).peak
                  if sr_shape else 0)  # the SR model's own attention (local layers at 1080p)
    text_encoder = TEXT_ENCODER_PARAMS * 2 * real_encoders
    resident = frozen + lora + optimizer + eval_copy
    components = {
        "frozen_weights": frozen / GB,
        "lora_params": lora / GB,
        "lora_grads": lora / GB,
        "optimizer_state": optimizer / GB,
        "activations": step.activations / GB,
        "temporaries": (step.peak - step.activations) / GB,
        "eval_checkpoint_copy": eval_copy / GB,
        "validation_forward": sample.peak / GB,
        "vaes": vaes / GB,
        "vae_decode_workspace": decode / GB,
        "sr_model": sr_model / GB,
        "sr_forward": sr_forward / GB,
        "text_encoder": text_encoder / GB,
    }
    # temporaries include the LoRA gradients as they appear; counting them again keeps the plan safe
    train_peak = (frozen + 2 * lora + optimizer + step.peak) / GB
    validation_peak = max(resident + sample.peak, resident + vaes + decode, optimizer + sr_model + sr_forward) / GB
    return Plan(settings=settings, world_size=world_size, train_shape=train_shape, validation_shape=val_shape,
                train_source=train_source, components=components, train_peak_gb=train_peak,
                validation_peak_gb=validation_peak,
                prompt_encoding_gb=text_encoder / GB)  # fmt: skip


def _candidates(layers: int):
    """Settings from cheapest (fastest, exact) to most frugal; ``None`` swap means 'search the count'."""
    yield MemorySettings(False)
    yield MemorySettings(True)
    yield MemorySettings(True, activation_offload=True)
    yield MemorySettings(True, fp8_base=True)
    yield MemorySettings(True, activation_offload=True, fp8_base=True)
    for fp8 in (False, True):
        for n in range(1, layers + 1):
            yield MemorySettings(True, activation_offload=True, fp8_base=fp8, blocks_to_swap=n)


def recommend(recipe: Recipe, gpu_memory_gb: float, **kwargs) -> Plan | None:
    """The first plan, cheapest first, that fits ``gpu_memory_gb``; ``None`` if none does.

    Block swap only changes the frozen weights, so a swap count reuses the trace of its settings.
    """
    config = recipe.preset_config()
    cache: dict[tuple, Plan] = {}
    swappable = config.num_layers if kwargs.get("world_size", 1) == 1 else 0
    for s in _candidates(swappable):
        key = (s.gradient_checkpointing, s.activation_offload, s.fp8_base)
        if key not in cache:
            cache[key] = plan_settings(recipe, replace(s, blocks_to_swap=0), **kwargs)
        p = cache[key] if s.blocks_to_swap == 0 else _with_swap(cache[key], recipe, s)
        p.gpu_memory_gb = gpu_memory_gb
        if p.fits:
            return p
    return None


def _with_swap(plan: Plan, recipe: Recipe, settings: MemorySettings) -> Plan:
    outside, layers = _weight_bytes(recipe.preset_config(), recipe.model.block_dtype, settings.fp8_base)
    frozen = _frozen_bytes(outside, layers, settings.blocks_to_swap, 1) / GB
    delta = frozen - plan.components["frozen_weights"]
    components = {**plan.components, "frozen_weights": frozen}
    return replace(plan, settings=settings, components=components, train_peak_gb=plan.train_peak_gb + delta,
                   validation_peak_gb=plan.validation_peak_gb + delta, recommendation=None)  # fmt: skip


def plan_recipe(recipe: Recipe, gpu_memory_gb: float | None = None, **kwargs) -> Plan:
    """The plan of the recipe's own memory settings, with a recommendation when ``gpu_memory_gb`` is given."""
    m = recipe.model
    settings = MemorySettings(m.gradient_checkpointing, m.activation_offload, m.fp8_base, m.blocks_to_swap)
    plan = plan_settings(recipe, settings, **kwargs)
    plan.gpu_memory_gb = gpu_memory_gb
    if gpu_memory_gb is not None:
        plan.recommendation = plan if plan.fits else recommend(recipe, gpu_memory_gb, **kwargs)
    return plan


_ROWS = [
    ("frozen_weights", "frozen weights (resident)", "both"),
    ("lora_params", "LoRA parameters (fp32)", "both"),
    ("lora_grads", "LoRA gradients (fp32)", "train"),
    ("optimizer_state", "AdamW state", "both"),
    ("activations", "activations saved for backward", "train"),
    ("temporaries", "temporaries (one layer's recompute/backward)", "train"),
    ("eval_checkpoint_copy", "eval checkpoint (second DiT)", "validation"),
    ("validation_forward", "sampling forward (no grad)", "validation"),
    ("vaes", "video + audio VAE (bf16)", "validation"),
    ("vae_decode_workspace", "VAE decode workspace (estimate)", "validation"),
    ("sr_model", "SR DiT (validation.sr; first DiT on the host)", "validation"),
    ("sr_forward", "SR sampling forward at the delivered size", "validation"),
]


def format_plan(plan: Plan) -> str:
    """The plan as a table by component, then the peaks and the recommendation."""
    s, (t, h, w) = plan.settings, plan.train_shape.video
    head = (f"memory plan (per process, world size {plan.world_size}): {plan.train_shape.tokens} tokens/clip "
            f"(latent {t}x{h}x{w}), batch {plan.train_shape.batch}; checkpointing={s.gradient_checkpointing} "
            f"offload={s.activation_offload} fp8_base={s.fp8_base} blocks_to_swap={s.blocks_to_swap}")
    lines = [head, f"training clips planned from {plan.train_source}", f"{'component':<48}{'GB':>9}  used in"]
    lines += [f"{label:<48}{plan.components[key]:>9.2f}  {where}" for key, label, where in _ROWS]
    lines += [f"{'training step peak':<48}{plan.train_peak_gb:>9.2f}",
              f"{'validation peak':<48}{plan.validation_peak_gb:>9.2f}",
              f"{'prompt encoding (T5Gemma-9B bf16, alone)':<48}{plan.prompt_encoding_gb:>9.2f}"]  # fmt: skip
    if plan.gpu_memory_gb is not None:
        lines.append(f"fits {plan.gpu_memory_gb:g} GB (5% + 0.5 GB headroom): {'yes' if plan.fits else 'NO'}")
        rec = plan.recommendation
        if rec is None:
            lines.append("no setting fits one process; try FSDP2 over more GPUs (--world-size) or a lower resolution"
                         + (", or validate on the trained model (model.eval_checkpoint=null: the eval "
                            f"checkpoint is a second DiT of {plan.components['eval_checkpoint_copy']:.1f} GB)"
                            if plan.components["eval_checkpoint_copy"] else ""))
        elif rec is not plan:
            lines.append(f"recommended: {' '.join(rec.settings.overrides())} "
                         f"(train {rec.train_peak_gb:.1f} GB, validation {rec.validation_peak_gb:.1f} GB)")  # fmt: skip
    return "\n".join(lines)


def check_memory_plan(recipe: Recipe, device: torch.device, world_size: int = 1, log=print,
                      gpu_memory_gb: float | None = None) -> Plan | None:  # fmt: skip
    """Log the plan before training and raise :class:`PlanError` when it will not fit.

    The budget is ``gpu_memory_gb``, else the CUDA device's memory. Without either (a CPU
    run) nothing is computed: tracing takes seconds that a CPU test run should not pay,
    and host memory is not what the plan is for. ``model.ignore_memory_plan: true`` turns
    the refusal into a warning; ``log=None`` checks without printing.
    """
    log = log or (lambda *_: None)
    if gpu_memory_gb is None and device.type == "cuda":
        gpu_memory_gb = torch.cuda.get_device_properties(device).total_memory / GB
    if gpu_memory_gb is None:
        log("memory plan: not computed for a CPU run; `python -m hhtune.plan RECIPE --gpu-memory GB` shows it")
        return None
    if recipe.model.preset is None:
        log("memory plan: skipped (set model.preset so the plan knows the architecture)")
        return None
    plan = plan_recipe(recipe, gpu_memory_gb, world_size=world_size)
    log(format_plan(plan))
    if plan.fits is False:
        rec = plan.recommendation
        hint = f"use {' '.join(rec.settings.overrides())}" if rec else "use FSDP2 over more GPUs or a lower resolution"
        if rec is None and recipe.model.eval_checkpoint:
            hint += " (or model.eval_checkpoint=null: validating on it loads a second DiT)"
        message = (f"the memory plan needs {needed_gb(plan.peak_gb):.1f} GB with headroom but the device has "
                   f"{gpu_memory_gb:.1f} GB: {hint}, or set model.ignore_memory_plan=true to try anyway")  # fmt: skip
        if not recipe.model.ignore_memory_plan:
            raise PlanError(message)
        log(f"warning: {message}")
    return plan
