"""The validation hook of the training loop: fixed prompts, the distilled sampler, saved and logged clips, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hhtune.media import resize_crop
from hhtune.speech.align import PhonemeRecognizer
from hhtune.speech.g2p import phonemize

from .. import face
from ..encoders import EncoderPaths
from .generate import OUTPUT_AUDIO_RATE, write_mp4, write_previews
from .metrics import dialogue_lines, mouth_sync, nearest_clip_distance, phoneme_error_rate, reference_fidelity
from .super_resolution import SrStage, render

_LANG_CODES = {"english": "en", "mandarin": "zh", "chinese": "zh", "cantonese": "yue", "japanese": "ja",
               "korean": "ko", "german": "de", "french": "fr"}  # fmt: skip


def run_validation(model: torch.nn.Module, prompts: list[str], *, encoders: EncoderPaths, out_dir: str | Path,
                   step: int, seed: int, reference_images: list[str] | None = None, acoustic_model: str | None = None,
                   wandb_run=None, seconds: float = 2.0, aspect: str = "16:9", base_resolution: int = 256,
                   text_features: list[tuple[torch.Tensor, int]] | None = None, write: bool = True,
                   vae_tiling: bool = False, offload_model: bool = False,
                   training_clips: list[torch.Tensor] | None = None,
                   sr: SrStage | None = None) -> dict[str, float]:  # fmt: skip
    """Sample every prompt with the distilled sampler at a fixed seed; save mp4 + previews; return mean metrics.

    ``text_features`` (one ``(features [1, L, C], L)`` per prompt, from ``encode_prompts``) are used
    instead of loading the text encoder. ``write=False`` only samples (the other processes of a
    sharded model take part in its forward passes) and returns ``{}``. With ``training_clips``
    (video latents, best :func:`~hhtune.sampling.metrics.clip_summary`-pooled) each sample's
    ``nearest_clip_distance`` is scored: near 0 means the run reproduces a training clip. With ``sr``
    (:class:`~hhtune.sampling.super_resolution.SrStage`) the main process renders each prompt through it, so
    clips, stills and scores are at the delivered size; the other processes take part in the first stage only.

    Lip-sync is measured at the mouth (:func:`~hhtune.sampling.metrics.mouth_sync`, face landmarks of
    :mod:`hhtune.face`): ``lip_sync_frames_without_face`` is logged for every sample, and
    ``lip_sync_confidence`` and ``lip_sync_offset_frames`` (positive: the picture lags the sound) for the
    samples with enough frames showing a face; each is the mean over those samples.
    """
    if text_features is not None and len(text_features) != len(prompts):
        raise ValueError(f"{len(text_features)} text features for {len(prompts)} prompts")
    out = Path(out_dir)
    device = next(model.parameters()).device
    recognizer = None
    if write:
        out.mkdir(parents=True, exist_ok=True)
    if acoustic_model and write:
        recognizer = PhonemeRecognizer(acoustic_model)
    lip_sync = face.available() is None
    scores: dict[str, list[float]] = {}
    for i, prompt in enumerate(prompts):
        image = None
        if reference_images and i < len(reference_images):
            image = np.asarray(Image.open(reference_images[i]).convert("RGB"))
        g = render(model, prompt, encoders, seconds=seconds, aspect=aspect, base_resolution=base_resolution,
                   seed=seed + i, reference_image=image, device=device, decode=write, vae_tiling=vae_tiling,
                   offload_model=offload_model, text_features=text_features[i] if text_features else None,
                   sr=sr if write else None)  # fmt: skip
        if not write:
            continue
        mp4 = write_mp4(g.frames, g.audio, out / f"prompt{i:02d}.mp4")
        write_previews(g, out / f"prompt{i:02d}")
        if lip_sync:
            _add_lip_sync(scores, g.audio, g.frames)
        if training_clips:
            distance = nearest_clip_distance(g.video_latents[0], training_clips)
            scores.setdefault("nearest_clip_distance", []).append(distance)
        if image is not None:
            ref = resize_crop(image[None], g.frames.shape[2], g.frames.shape[1])[0]
            scores.setdefault("reference_psnr", []).append(reference_fidelity(g.frames, ref))
        if recognizer is not None:
            for lang, line in dialogue_lines(prompt):
                code = _LANG_CODES.get(lang.lower())
                if code is None:
                    continue
                from scipy.signal import resample_poly  # noqa: PLC0415 -- heavy: scipy.signal loads in ~1 s, only phoneme scoring needs it

                expected = [p for w in phonemize(line, code) for p in w.phonemes]
                heard = recognizer.transcribe(resample_poly(g.audio.mean(axis=1), 160, 441).astype(np.float32))
                scores.setdefault(f"per_{code}", []).append(phoneme_error_rate(heard, expected))
        if wandb_run is not None:
            import wandb  # noqa: PLC0415 -- heavy: wandb loads in ~1 s, only with a W&B run

            wandb_run.log({f"samples/prompt{i:02d}": wandb.Video(str(mp4), format="mp4", caption=prompt[:200])},
                          step=step)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _add_lip_sync(scores: dict[str, list[float]], audio: np.ndarray, frames: np.ndarray) -> None:
    """Append one sample's mouth-level lip-sync to ``scores`` (confidence and offset only when a face was seen)."""
    sync = mouth_sync(audio.mean(axis=1), OUTPUT_AUDIO_RATE, face.mouth_opening(frames))
    scores.setdefault("lip_sync_frames_without_face", []).append(float(sync.frames_without_face))
    if sync.confidence is not None:
        scores.setdefault("lip_sync_confidence", []).append(sync.confidence)
        scores.setdefault("lip_sync_offset_frames", []).append(float(sync.offset_frames))
