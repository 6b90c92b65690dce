"""Stage 8: latents of every clip with the Wan2.2 VAE, the Stable Audio VAE and T5Gemma.

Clips of one shape (frames, height, width) are encoded in batches of ``encode_batch_size``.
Each clip's latents are written atomically to ``.work/latents/<clip_id>.safetensors`` with a
key of what they were made from (the clip's content and caption), so an interrupted encode
resumes clip by clip and a changed clip is encoded again. Under ``accelerate launch`` the
batches are split across processes (``PartialState.split_between_processes``), each on its GPU.
Latents made by other encoders are never mixed in: the build stops and says how to re-encode.

With ``sr_resolution`` each clip is also read again from the footage at that super-resolution stage's size
(:func:`~hhtune.contract.sr_size` of its bucket) and encoded as ``sr_video_latents``, what an SR LoRA learns to
reach from the base-size latents (the clip cache holds base-size frames only, and a 1080p clip would be GBs).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from safetensors import safe_open

from hhtune.contract import (
    AUDIO_LATENTS,
    LATENT_COLUMNS,
    REFERENCE_LATENTS,
    SR_VIDEO_LATENTS,
    TEXT_EMBEDS,
    VIDEO_LATENTS,
    sr_size,
)
from hhtune.encoders import (
    EncoderPaths,
    build_tiny_encoders,
    encoders_fingerprint,
    load_audio_vae,
    load_text_encoder,
    load_video_vae,
)
from hhtune.io import atomic_save_file, atomic_write_text
from hhtune.media import FrameReader, probe
from hhtune.progress import ProgressBar

from .config import DataConfig, EncoderFolders
from .units import Clip, Unit

LATENTS = (*LATENT_COLUMNS, REFERENCE_LATENTS)  # what a clip's latents file holds


class StaleLatentsError(ValueError):
    """``.work/latents`` holds latents from other encoders; the message says how to re-encode."""


def resolve_encoders(cfg: DataConfig, out: Path) -> EncoderPaths:
    """The encoder folders: tiny random ones built in ``DATASET_DIR/encoders``, or ``cfg.encoders``."""
    if cfg.tiny_encoders:
        return build_tiny_encoders(Path(out) / "encoders")
    if not cfg.encoders:
        raise ValueError("--encode needs encoders: set `encoders:` (a folder with "
                         "video_vae/, audio_vae/, text_encoder/) "
                         "or `tiny_encoders: true` in the data config")  # fmt: skip
    if isinstance(cfg.encoders, EncoderFolders):
        paths = EncoderPaths(video_vae=Path(cfg.encoders.video_vae), audio_vae=Path(cfg.encoders.audio_vae),
                             text_encoder=Path(cfg.encoders.text_encoder))  # fmt: skip
    else:
        folder = Path(cfg.encoders)
        paths = EncoderPaths(video_vae=folder / "video_vae", audio_vae=folder / "audio_vae",
                             text_encoder=folder / "text_encoder")  # fmt: skip
    for name in ("video_vae", "audio_vae", "text_encoder"):
        if not (Path(getattr(paths, name)) / "config.json").is_file():
            raise ValueError(f"encoder folder {getattr(paths, name)} ({name}) has no config.json")
    return paths


def clip_key(clip: Clip, inputs: str | None, sr_resolution: str | None = None) -> str:
    """What a clip's latents depend on besides the encoders: its pixels/audio (source range, bucket) and caption,
    the ``inputs`` fingerprint of its unit, and the super-resolution size it is also encoded at, if any."""
    parts = [clip.source_file, clip.start_s, clip.end_s, clip.width, clip.height, clip.num_frames, clip.caption]
    sr = [sr_resolution] if sr_resolution else []  # keys of base-only latents stay as they were
    return hashlib.sha1(json.dumps([*parts, inputs or "", *sr], ensure_ascii=False).encode()).hexdigest()[:16]


def encode_clips(units: list[Unit], work: Path, paths: EncoderPaths, cfg: DataConfig, progress: bool = True,
                 reencode: bool = False, footage: Path | None = None) -> int:  # fmt: skip
    """Encode every clip whose latents are missing or stale; returns how many this process encoded.

    ``footage`` (the footage folder) is needed with ``cfg.sr_resolution``: the clips are read again there.
    """
    if cfg.sr_resolution and footage is None:
        raise ValueError("sr_resolution re-reads the clips from the footage: pass the footage folder")
    state = PartialState()
    folder = work / "latents"
    if state.is_main_process:
        _check_encoders(folder, paths, reencode)
    state.wait_for_everyone()
    clips = [(c, clip_key(c, u.inputs, cfg.sr_resolution)) for u in units for c in u.clips]
    clips = [(c, key) for c, key in clips if latents_key(folder / f"{c.clip_id}.safetensors") != key]
    if not clips:
        return 0
    batches = _batches(clips, cfg.encode_batch_size)
    device = state.device
    video, audio, text = (load_video_vae(paths.video_vae, device), load_audio_vae(paths.audio_vae, device),
                          load_text_encoder(paths.text_encoder, device))  # fmt: skip
    done = 0
    with state.split_between_processes(batches) as mine, \
            ProgressBar("stage 8: encode", sum(len(b) for b in mine), enabled=progress) as bar:  # fmt: skip
        for batch in mine:
            encoded = _encode_batch([c for c, _ in batch], work, video, audio, text)
            if cfg.sr_resolution:
                encoded = _with_sr([c for c, _ in batch], encoded, video, footage, cfg)
            for (clip, key), tensors in zip(batch, encoded):
                atomic_save_file({k: v.contiguous() for k, v in tensors.items()},
                                 folder / f"{clip.clip_id}.safetensors",
                                 metadata={"key": key})  # fmt: skip
                done += 1
                bar.advance()
    state.wait_for_everyone()
    return done


def latents_key(path: Path) -> str | None:
    """The key stored with a clip's latents (``None`` when there are none)."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("key")


def _batches(clips: list[tuple[Clip, str]], size: int) -> list[list[tuple[Clip, str]]]:
    """Clips (with their keys) of the same shape, ``size`` at a time, in a stable order."""
    groups: dict[tuple[int, int, int], list[tuple[Clip, str]]] = {}
    for c, key in sorted(clips, key=lambda ck: ck[0].clip_id):
        groups.setdefault((c.num_frames, c.height, c.width), []).append((c, key))
    return [g[i : i + size] for _, g in sorted(groups.items()) for i in range(0, len(g), size)]


@torch.no_grad()
def _encode_batch(batch: list[Clip], work: Path, video, audio, text) -> list[dict[str, torch.Tensor]]:
    data = [np.load(work / "clips" / f"{c.clip_id}.npz") for c in batch]
    frames = torch.stack([torch.from_numpy(d["frames"]) for d in data]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    waves = torch.stack([torch.from_numpy(_stereo(d["audio"])) for d in data])  # [B, 2, N] at 51200 Hz
    refs = torch.stack([
        torch.from_numpy(d["reference"]).permute(2, 0, 1).float() / 127.5 - 1 if "reference" in d
        else frames[b, :, 0] for b, d in enumerate(data)
    ])[:, :, None]  # fmt: skip
    feats, lengths = text.encode([c.caption for c in batch])
    v, a, r = video.encode(frames).cpu(), audio.encode(waves).cpu(), video.encode(refs).cpu()
    return [{VIDEO_LATENTS: v[b], AUDIO_LATENTS: a[b], TEXT_EMBEDS: feats[b, : int(lengths[b])].cpu(),
             REFERENCE_LATENTS: r[b]} for b in range(len(batch))]  # fmt: skip


@torch.no_grad()
def _with_sr(batch: list[Clip], encoded: list[dict[str, torch.Tensor]], video, footage: Path,
             cfg: DataConfig) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """``encoded`` with each clip's :data:`SR_VIDEO_LATENTS`: its frames read again from the footage at the SR
    size of its bucket (resized and centre-cropped as the base-size ones), encoded by the same video VAE."""
    frames = []
    for c in batch:
        path = footage / c.source_file
        reader = FrameReader(path, probe(path), sr_size(c.bucket, cfg.base_resolution, cfg.sr_resolution))
        try:
            frames.append(torch.from_numpy(reader.read(c.start_s, c.num_frames)))
        finally:
            reader.close()
    hr = video.encode(torch.stack(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1).cpu()
    return [{**tensors, SR_VIDEO_LATENTS: hr[b]} for b, tensors in enumerate(encoded)]


def _stereo(wave: np.ndarray) -> np.ndarray:
    """``[2, N]`` float32 (clips cached by older builds hold mono ``[N]``)."""
    return np.stack([wave, wave]) if wave.ndim == 1 else wave


def _check_encoders(folder: Path, paths: EncoderPaths, reencode: bool) -> None:
    """Refuse to mix latents of other encoders into this build (``reencode`` drops them instead)."""
    stamp = folder / "encoders.json"
    want = {"fingerprint": encoders_fingerprint(paths), "paths": {k: str(v) for k, v in paths.model_dump().items()}}
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if have.get("fingerprint") != want["fingerprint"]:
            if not reencode:
                raise StaleLatentsError(
                    f"{folder} holds latents from other encoders (fingerprint {have.get('fingerprint')}, "
                    f"now {want['fingerprint']}); they are not mixed in. Pass --reencode to encode every clip again."
                )
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(want))


__all__ = ["LATENTS", "StaleLatentsError", "clip_key", "encode_clips", "latents_key", "resolve_encoders"]
