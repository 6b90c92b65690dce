"""The data config (YAML, validated like recipes): defaults for a footage folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hhtune.contract import BUCKETS, Bucket, SrResolution
from hhtune.speech.languages import normalise_language


class EncoderFolders(BaseModel):
    """The three encoder folders named one by one (instead of one folder holding all three)."""

    model_config = ConfigDict(extra="forbid")

    video_vae: str = Field(..., description="Wan2.2 VAE (diffusers AutoencoderKLWan folder)")
    audio_vae: str = Field(..., description="Stable Audio Open VAE (diffusers AutoencoderOobleck folder)")
    text_encoder: str = Field(..., description="T5Gemma encoder + tokenizer folder")


class CaptionerConfig(BaseModel):
    """Who writes the clips' descriptions (the captioning stage): a local model folder or an OpenAI-compatible server.

    ``model`` is a local folder (Qwen2.5-Omni / Qwen3-Omni: frames and audio; Qwen2.5-VL / Qwen3-VL: frames only)
    unless ``endpoint`` is set, when it is the model name the server knows.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="local model folder, or the served model's name when endpoint is set")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key, if any")
    audio: bool = Field(True, description="send the clip's audio to the endpoint (false for picture-only models)")
    frames: int = Field(8, ge=1, le=64, description="frames sampled evenly across each clip")
    batch_size: int = Field(4, ge=1, description="clips captioned together by a local model")
    device: str | None = Field(None, description="local model device (default: cuda when available, else cpu)")
    max_new_tokens: int = Field(512, ge=1, description="longest answer in tokens (a 200-word description needs ~300)")
    timeout_s: float = Field(120.0, gt=0, description="endpoint: seconds per request before it is retried")
    retries: int = Field(3, ge=0, description="endpoint: retries of a failed or timed-out request")


class DataConfig(BaseModel):
    """How a footage folder becomes a dataset. Every default lives here."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None,
                                 description="default language when metadata names none (en, zh, yue, ja, ko, de, fr)")
    trigger: str | None = Field(None, description="trigger word inserted into every caption (metadata may override)")
    trigger_position: Literal["start", "end"] = Field(
        "start", description="where the trigger goes when the description has no {trigger} placeholder")
    speaker: str = Field("the speaker", description="speaker description in Dialogue lines when metadata names none")
    background_sound: str = "No prominent background sound"
    buckets: list[Bucket] = Field(default_factory=lambda: list(BUCKETS))
    base_resolution: int = Field(256, ge=32, multiple_of=32, description="short side in pixels")
    sr_resolution: SrResolution | None = Field(
        None, description="also encode each clip at this super-resolution stage's size (sr_video_latents, read "
        "again from the footage), for an SR LoRA (model.variant sr_540p / sr_1080p); null = base size only")
    min_seconds: float = Field(1.0, gt=0)
    max_seconds: float = Field(5.0, gt=0)
    encoders: str | EncoderFolders | None = Field(
        None, description="folder with video_vae/, audio_vae/, text_encoder/ (or a mapping of the three)")
    encode_batch_size: int = Field(4, ge=1, description="clips of one shape encoded together (stage 8)")
    tiny_encoders: bool = Field(False,
                                description="build random tiny encoders in DATASET_DIR/encoders (quick start, tests)")
    acoustic_model: str | None = Field(None, description="wav2vec2 phoneme CTC model folder for forced alignment")
    asr_model: str | None = Field(None, description="Whisper model folder for clips without transcripts")
    untranscribed: Literal["asr", "speech_without_dialogue", "drop"] = Field(
        "speech_without_dialogue", description="speech outside every transcript cue: transcribe it with asr_model, "
        "keep it as clips with no Dialogue line, or drop it (always accounted in the report)")
    keep_silent_video: bool = Field(True, description="footage with no audio track becomes clips that train the "
                                    "picture only (silence encoded, the audio loss masked); false skips it")
    mouth_regions: bool = Field(True, description="find the mouth in every frame (dlib face landmarks, ~10 ms a "
                                "frame) and store its box per latent frame: the mouth_boxes column that "
                                "loss.mouth_weight needs")
    workers: int = Field(2, ge=1)
    captioner: CaptionerConfig | None = Field(
        None, description="write each clip's description, speaker and background sound with a captioning model")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must be >= min_seconds ({self.min_seconds})")
        if self.untranscribed == "asr" and not self.asr_model:
            raise ValueError("untranscribed: asr needs asr_model (a local Whisper folder); "
                             "or set untranscribed to speech_without_dialogue or drop")
        if not self.buckets:
            raise ValueError("buckets must name at least one of 16:9, 9:16, 4:3, 1:1")
        if self.language is not None:
            self.language = normalise_language(self.language)
        return self

    def fingerprint(self) -> str:
        """Hash of every setting that changes what stages 1-7 produce (the captioner runs after them, with its own
        cache keyed by clip, model and prompt; sr_resolution only changes the encoding, keyed per clip)."""
        keep = self.model_dump(exclude={"workers", "encoders", "tiny_encoders", "encode_batch_size", "captioner",
                                        "sr_resolution"})  # fmt: skip
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def load_data_config(path: str | Path | None, overrides: dict | None = None) -> DataConfig:
    """Read and validate a data config YAML (``None``: all defaults); a typo names the key and the allowed keys."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"data config not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p} must be a mapping of settings")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return DataConfig.model_validate(data)
    except ValidationError as e:
        from hhtune.recipe import format_errors  # noqa: PLC0415 -- hhtune.recipe pulls in peft (seconds per worker)

        raise ValueError(format_errors(e, str(path or "data config"), root=DataConfig)) from None
