"""Does training teach the sampler? An adapter trained on one or two clips, sampled with the 8-step sampler.

Loss curves cannot show that the objective and the sampler agree: a sign or sigma
convention that differs between them still lowers the loss. This trains an adapter
with the real loop (``hhtune.training.train``) on one or two synthetic clips, samples
each clip's caption with the distilled sampler from several seeds, and measures how far
the samples land from the nearest training clip (``nearest_clip_distance``), for the
adapted model and for its base. A run that learns lands much closer: the test
(``tests/training/test_learning.py``) asks for at most half the base's median distance.

The base is :func:`~hhtune.training.synthetic.denoising_base` (a random model that
already passes its input through, as a pretrained one does), saved as an official-layout
checkpoint and trained through ``model.checkpoint``.

    python benchmarks/learning.py [--steps 2000] [--clips 1] [--seeds 8]
    python benchmarks/learning.py --sr --steps 200 [--seeds 4]

``--sr`` runs the super-resolution variant (:func:`sr_learning_check`): an SR adapter trained on one clip's
high-resolution latents, then the SR stage started from that clip's upsampled base-size latents.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hhtune import adapters
from hhtune.contract import AUDIO_LATENTS, SR_VIDEO_LATENTS, TEXT_EMBEDS, VIDEO_LATENTS
from hhtune.model import ModelConfig, save_checkpoint
from hhtune.recipe import validate_recipe
from hhtune.sampling.generate import model_velocity_fn
from hhtune.sampling.metrics import nearest_clip_distance
from hhtune.sampling.samplers import sample_distilled, sample_super_resolution
from hhtune.training import TrainingDataset, build_model, train
from hhtune.training.synthetic import denoising_base, write_synthetic_dataset

#: The smallest model that learned reliably here: 6 layers (4 shared, 2 sandwich), hidden 512. Hidden 256 with
#: 4 layers, or twice the learning rate, left the samples as far from the clip as the base's.
CONFIG = ModelConfig(num_layers=6, hidden_size=512, head_dim=64, num_query_groups=2, text_in_channels=32,
                     mm_layers=[0, 5], gelu7_layers=[0])  # fmt: skip


@dataclass
class LearningResult:
    """Median relative distance of 8-step samples to the nearest training clip."""

    base: float
    adapted: float
    train_seconds: float

    @property
    def ratio(self) -> float:
        return self.adapted / self.base


def learning_check(work: Path, *, steps: int = 2000, clips: int = 1, seeds: int = 4, rank: int = 64,
                   lr: float = 1e-3, log=lambda *_: None) -> LearningResult:  # fmt: skip
    """Train an adapter on ``clips`` synthetic clips for ``steps`` steps and compare samples with and without it."""
    work = Path(work)
    save_checkpoint(denoising_base(CONFIG, seed=0), work / "base")
    dataset = write_synthetic_dataset(work / "dataset", clips=clips, frames=5, latent_hw=(4, 4), text_len=(6, 6),
                                      text_channels=CONFIG.text_in_channels, seed=0)  # fmt: skip
    recipe = validate_recipe({
        "model": {"checkpoint": str(work / "base"), "block_dtype": "fp32", "gradient_checkpointing": False},
        "lora": {"rank": rank},
        "data": {"dataset": str(dataset), "batch_size": 1},
        "optimizer": {"lr": lr, "weight_decay": 0.01},
        "train": {"max_steps": steps, "output_dir": str(work / "run"), "mixed_precision": "no", "seed": 0,
                  "max_grad_norm": None},
        "checkpointing": {"every_steps": steps},
        "validation": {"at_end": False},
        "logging": {"wandb_mode": "disabled"},
        "export": {"formats": ["peft"]},
    })  # fmt: skip
    t0 = time.perf_counter()
    run = train(recipe, log=log)
    seconds = time.perf_counter() - t0
    data = TrainingDataset(dataset)
    rows = [data.ds[i] for i in range(len(data))]
    videos = [torch.tensor(np.asarray(r[VIDEO_LATENTS])) for r in rows]

    def median_distance(model: torch.nn.Module) -> float:
        distances = []
        for row, video in zip(rows, videos):
            text = torch.tensor(np.asarray(row[TEXT_EMBEDS]))[None]
            audio_shape = (1, *np.asarray(row[AUDIO_LATENTS]).shape)
            for seed in range(seeds):
                sample, _ = sample_distilled(model_velocity_fn(model, text, text.shape[1]), (1, *video.shape),
                                             audio_shape,
                                             generator=torch.Generator().manual_seed(1000 + seed))  # fmt: skip
                distances.append(nearest_clip_distance(sample[0], videos))
        return statistics.median(distances)

    base = median_distance(build_model(recipe.model).eval())
    adapted = median_distance(adapters.load(run / "adapter", build_model(recipe.model)).eval())
    return LearningResult(base=base, adapted=adapted, train_seconds=seconds)


# -- the super-resolution variant --------------------------------------------------------------------------------

#: A smaller model than :data:`CONFIG` learns the SR task in a few hundred steps: the start point already holds
#: the clip's coarse picture, so the adapter only has to add its detail.
SR_CONFIG = ModelConfig(num_layers=4, hidden_size=256, head_dim=64, num_query_groups=2, text_in_channels=32,
                        mm_layers=[0, 3], gelu7_layers=[0]).with_variant("sr_1080p")  # fmt: skip


def sr_learning_check(work: Path, *, steps: int = 200, seeds: int = 4, rank: int = 64, lr: float = 2e-3,
                      log=lambda *_: None) -> LearningResult:  # fmt: skip
    """Train an SR adapter on one synthetic clip's high-resolution latents (twice the base grid) for ``steps``
    steps, then compare the SR stage's outputs (:func:`~hhtune.sampling.samplers.sample_super_resolution`, from
    the clip's upsampled base latents) with and without it."""
    work = Path(work)
    save_checkpoint(denoising_base(SR_CONFIG, seed=0), work / "sr_base")
    dataset = write_synthetic_dataset(work / "sr_dataset", clips=1, frames=5, latent_hw=(4, 4), text_len=(6, 6),
                                      text_channels=SR_CONFIG.text_in_channels, seed=0, sr_scale=2)  # fmt: skip
    recipe = validate_recipe({
        "model": {"checkpoint": str(work / "sr_base"), "variant": "sr_1080p", "block_dtype": "fp32",
                  "gradient_checkpointing": False},
        "lora": {"rank": rank},
        "data": {"dataset": str(dataset), "batch_size": 1},
        "optimizer": {"lr": lr, "weight_decay": 0.01},
        "train": {"max_steps": steps, "output_dir": str(work / "sr_run"), "mixed_precision": "no", "seed": 0,
                  "max_grad_norm": None},
        "checkpointing": {"every_steps": steps},
        "validation": {"at_end": False},
        "logging": {"wandb_mode": "disabled"},
        "export": {"formats": ["peft"]},
    })  # fmt: skip
    t0 = time.perf_counter()
    run = train(recipe, log=log)
    seconds = time.perf_counter() - t0
    row = TrainingDataset(dataset).ds[0]
    lr_video, hr, audio, text = (torch.tensor(np.asarray(row[k]))[None] for k in
                                 (VIDEO_LATENTS, SR_VIDEO_LATENTS, AUDIO_LATENTS, TEXT_EMBEDS))  # fmt: skip

    def median_distance(model: torch.nn.Module) -> float:
        fn = model_velocity_fn(model, text, text.shape[1])
        return statistics.median(
            nearest_clip_distance(sample_super_resolution(fn, lr_video, audio, tuple(hr.shape[-2:]),
                                                          generator=torch.Generator().manual_seed(1000 + seed))[0][0],
                                  [hr[0]])
            for seed in range(seeds))  # fmt: skip

    base = median_distance(build_model(recipe.model).eval())
    adapted = median_distance(adapters.load(run / "adapter", build_model(recipe.model)).eval())
    return LearningResult(base=base, adapted=adapted, train_seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--sr", action="store_true", help="the super-resolution variant (one clip; use --steps 200)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sr:
            r = sr_learning_check(Path(tmp), steps=args.steps, seeds=args.seeds)
        else:
            r = learning_check(Path(tmp), steps=args.steps, clips=args.clips, seeds=args.seeds)
    print(f"median distance to the nearest training clip: base {r.base:.3f}, adapted {r.adapted:.3f} "
          f"(ratio {r.ratio:.2f}); {args.steps} steps on {args.clips} clip(s) in {r.train_seconds:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
