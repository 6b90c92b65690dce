"""Stage 8: latents of every clip with the Wan2.2 VAE, the Stable Audio VAE and T5Gemma.

Each clip's latents are written atomically to ``.work/latents/<clip_id>.safetensors``,
so an interrupted encode resumes clip by clip. Under ``accelerate launch`` the clips
are split across processes (each GPU encodes its share).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hhtune.encoders import (EncoderPaths, build_tiny_encoders, load_audio_vae, load_text_encoder,
                             load_video_vae)  # fmt: skip
from hhtune.encoders import encoders_fingerprint
from hhtune.io import atomic_save_file, atomic_write_text

from .config import DataConfig


def resolve_encoders(cfg: DataConfig, out: Path) -> EncoderPaths:
    """The encoder folders: tiny random ones built in ``DATASET_DIR/encoders``, or ``cfg.encoders``."""
    if cfg.tiny_encoders:
        return build_tiny_encoders(out / "encoders")
    if not cfg.encoders:
        raise ValueError("--encode needs encoders: set `encoders:` (a folder with video_vae/, audio_vae/, text_encoder/) "
                         "or `tiny_encoders: true` in the data config")  # fmt: skip
    folder = Path(cfg.encoders)
    return EncoderPaths(video_vae=folder / "video_vae", audio_vae=folder / "audio_vae", text_encoder=folder / "text_encoder")


def encode_clips(units: list[dict], work: Path, paths: EncoderPaths, cfg: DataConfig, progress: bool = True) -> None:
    """Encode every clip that has no latents yet."""
    from accelerate import PartialState

    state = PartialState()
    _drop_stale_latents(work / "latents", paths, state.is_main_process)
    clips = [c for u in units for c in u["clips"] if not (work / "latents" / f"{c['clip_id']}.safetensors").is_file()]
    if not clips:
        return
    device = state.device
    video, audio, text = load_video_vae(paths.video_vae, device), load_audio_vae(paths.audio_vae, device), \
        load_text_encoder(paths.text_encoder, device)  # fmt: skip
    (work / "latents").mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(clips) as mine:
        for clip in mine:
            data = np.load(work / "clips" / f"{clip['clip_id']}.npz")
            frames = torch.from_numpy(data["frames"]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, F, H, W]
            wave = torch.from_numpy(data["audio"])[None, None].expand(1, 2, -1)  # mono duplicated, as upstream
            feats, lengths = text.encode([clip["caption"]])
            ref_pixels = torch.from_numpy(data["reference"]).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1 \
                if "reference" in data else frames[:, :, :1]  # fmt: skip
            tensors = {
                "video_latents": video.encode(frames)[0].cpu(),
                "audio_latents": audio.encode(wave)[0].cpu(),
                "text_embeds": feats[0, : int(lengths[0])].cpu(),
                "reference_latents": video.encode(ref_pixels)[0].cpu(),
            }
            atomic_save_file({k: v.contiguous() for k, v in tensors.items()},
                             work / "latents" / f"{clip['clip_id']}.safetensors")  # fmt: skip
    state.wait_for_everyone()


def _drop_stale_latents(folder: Path, paths: EncoderPaths, main: bool) -> None:
    """Latents made by other encoders are never reused: they are removed (and the build says so)."""
    import json
    import shutil

    stamp = folder / "encoders.json"
    want = {"fingerprint": encoders_fingerprint(paths)}
    if stamp.is_file() and json.loads(stamp.read_text()) != want and main:
        print(f"encoders changed since {folder} was written: re-encoding every clip")
        shutil.rmtree(folder)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, json.dumps(want))
