"""Latent datasets in the data_prep on-disk format, made from random numbers.

For tests and benchmarks of the training loop without footage or encoders: the
Arrow dataset, the manifest and the columns are exactly what ``data_prep build
--encode`` writes (docs/architecture.md), only the latents are random.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import FORMAT_VERSION


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
) -> Path:
    """Write ``clips`` random clips (``buckets`` different latent sizes) and return the dataset folder."""
    import datasets

    rng = np.random.default_rng(seed)
    path = Path(path)
    rows: dict[str, list] = {k: [] for k in ("clip_id", "source_file", "start_s", "end_s", "language", "caption",
                                             "transcript", "alignment", "speech_mask", "bucket", "width", "height",
                                             "num_frames", "video_latents", "audio_latents", "text_embeds")}  # fmt: skip
    if with_reference:
        rows["reference_latents"] = []
    t = (frames - 1) // 4 + 1
    for i in range(clips):
        h, w = latent_hw[0], latent_hw[1] + 2 * (i % buckets)
        video = rng.standard_normal((48, t, h, w), dtype=np.float32)
        lt = int(rng.integers(text_len[0], text_len[1] + 1))
        speech = np.zeros(frames, dtype=np.float32)
        speech[frames // 4 : 3 * frames // 4 + 1] = 1.0
        rows["clip_id"].append(f"synthetic-{i:04d}")
        rows["source_file"].append(f"synthetic-{i:04d}.mp4")
        rows["start_s"].append(0.0)
        rows["end_s"].append(frames / 25)
        rows["language"].append(["en", "zh", "ja", "de"][i % 4])
        rows["caption"].append(f"synthetic clip {i}")
        rows["transcript"].append("")
        rows["alignment"].append(json.dumps({"method": "none", "words": [], "phonemes": []}))
        rows["speech_mask"].append(speech.tolist())
        rows["bucket"].append("16:9")
        rows["width"].append(w * 16)
        rows["height"].append(h * 16)
        rows["num_frames"].append(frames)
        rows["video_latents"].append(video)
        rows["audio_latents"].append(rng.standard_normal((frames, 64), dtype=np.float32))
        rows["text_embeds"].append(rng.standard_normal((lt, text_channels), dtype=np.float32))
        if with_reference:
            rows["reference_latents"].append(video[:, :1].copy())
    path.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows).save_to_disk(str(path / "dataset"))
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": f"synthetic-{seed}", "encoders": {},
                "settings": {"synthetic": True}, "encoded": True}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
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
    import torch

    from ..model import HappyHorseTransformer

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
