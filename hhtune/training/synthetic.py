"""Latent datasets in the data_prep on-disk format, made from random numbers.

For tests and benchmarks of the training loop without footage or encoders: the
Arrow dataset, the manifest and the columns are exactly what ``data_prep build
--encode`` writes (docs/architecture.md), only the latents are random.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..contract import (
    AUDIO_LATENTS,
    FORMAT_VERSION,
    LATENT_COLUMNS,
    MANIFEST,
    META_COLUMNS,
    MOUTH_BOXES,
    NO_MOUTH,
    REFERENCE_LATENTS,
    ROWS,
    SR_VIDEO_LATENTS,
    TEXT_EMBEDS,
    VIDEO_LATENTS,
    VIDEO_STRIDE,
    LatentShape,
    seconds_of,
)
from ..model import HappyHorseTransformer


def write_synthetic_dataset(
    path: str | Path,
    *,
    clips: int = 4,
    frames: int = 5,
    latent_hw: tuple[int, int] = (4, 4),
    text_len: tuple[int, int] = (3, 8),
    text_channels: int = 32,
    seed: int = 0,
    buckets: int = 1,
    with_reference: bool = False,
    mouth_boxes: bool = False,
    sr_scale: int | None = None,
) -> Path:
    """Write ``clips`` random clips (``buckets`` different latent sizes) and return the dataset folder.

    ``mouth_boxes``: with the :data:`~hhtune.contract.MOUTH_BOXES` column, the mouth in the 2x2 latent cells at the
    centre of every latent frame but the last, which has no face.

    ``sr_scale`` adds :data:`~hhtune.contract.SR_VIDEO_LATENTS` (format 2): random latents ``sr_scale`` times the
    base grid on each side, and the base ``video_latents`` become their block averages, as a clip encoded at
    both sizes holds the same picture.
    """
    import datasets  # noqa: PLC0415 -- heavy: datasets (pyarrow) loads in ~1 s, only writing the Arrow table needs it

    rng = np.random.default_rng(seed)
    path = Path(path)
    rows: dict[str, list] = {k: [] for k in (*META_COLUMNS, *LATENT_COLUMNS)}
    if with_reference:
        rows[REFERENCE_LATENTS] = []
    if mouth_boxes:
        rows[MOUTH_BOXES] = []
    if sr_scale is not None:
        rows[SR_VIDEO_LATENTS] = []
    for i in range(clips):
        h, w = latent_hw[0], latent_hw[1] + 2 * (i % buckets)
        shape = LatentShape.from_pixels(w * VIDEO_STRIDE[2], h * VIDEO_STRIDE[1], frames)
        video = rng.standard_normal(shape.video, dtype=np.float32)
        sr_video = None
        if sr_scale is not None:
            c, t = shape.video[:2]
            sr_video = rng.standard_normal((c, t, h * sr_scale, w * sr_scale), dtype=np.float32)
            video = sr_video.reshape(c, t, h, sr_scale, w, sr_scale).mean(axis=(3, 5))
        lt = int(rng.integers(text_len[0], text_len[1] + 1))
        speech = np.zeros(frames, dtype=np.float32)
        speech[frames // 4 : 3 * frames // 4 + 1] = 1.0
        row = {"clip_id": f"synthetic-{i:04d}", "source_file": f"synthetic-{i:04d}.mp4", "start_s": 0.0,
               "end_s": seconds_of(frames), "language": ["en", "zh", "ja", "de"][i % 4],
               "caption": f"synthetic clip {i}", "transcript": "",
               "alignment": json.dumps({"method": "none", "words": [], "phonemes": []}), "speech_mask": speech.tolist(),
               "bucket": "16:9", "width": w * VIDEO_STRIDE[2], "height": h * VIDEO_STRIDE[1], "num_frames": frames,
               VIDEO_LATENTS: video, AUDIO_LATENTS: rng.standard_normal(shape.audio, dtype=np.float32),
               TEXT_EMBEDS: rng.standard_normal((lt, text_channels), dtype=np.float32),
               REFERENCE_LATENTS: video[:, :1].copy(), SR_VIDEO_LATENTS: sr_video,
               MOUTH_BOXES: [[w // 2 - 1, h // 2 - 1, w // 2 + 1, h // 2 + 1]] * (shape.latent_frames - 1)
               + [list(NO_MOUTH)]}  # fmt: skip
        for k, column in rows.items():
            column.append(row[k])
    path.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows).save_to_disk(str(path / ROWS))
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": f"synthetic-{seed}", "encoders": {},
                "settings": {"synthetic": True}, "encoded": True}  # fmt: skip
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def denoising_base(config, seed: int = 0):
    """A random model of ``config`` that already denoises at full noise, as a pretrained flow model does.

    A random base maps its input through frozen random embedders and heads, and a LoRA on
    the blocks cannot undo that in a test's budget; a pretrained base passes its input
    through. Here every block's residual branches start at zero (``linear_proj`` and
    ``down_proj``) and the video/audio embedders and heads are transposes of one random
    orthonormal basis, so the base predicts ``v = x_t / rms(x_t)``: right at sigma = 1,
    wrong for any clean content. What an adapter learns on top is then what it learned
    from the clips. Used by the learning check (``benchmarks/learning.py``) and its test.
    """
    if config.hidden_size < max(config.video_in_channels, config.audio_in_channels):
        raise ValueError(f"a denoising base needs hidden_size >= {config.video_in_channels} (the video token width), "
                         f"got {config.hidden_size}")  # fmt: skip
    torch.manual_seed(seed)
    model = HappyHorseTransformer(config).float()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("linear_proj.weight", "down_proj.weight")):
                p.zero_()
        heads = ((model.adapter.video_embedder, model.final_linear_video, config.video_in_channels),
                 (model.adapter.audio_embedder, model.final_linear_audio, config.audio_in_channels))  # fmt: skip
        for embedder, head, channels in heads:
            basis, _ = torch.linalg.qr(torch.randn(config.hidden_size, channels, generator=gen))
            embedder.weight.copy_(basis)
            embedder.bias.zero_()
            head.weight.copy_(basis.T * (channels / config.hidden_size) ** 0.5)
    return model
