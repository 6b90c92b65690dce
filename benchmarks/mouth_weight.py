"""Mouth weight 1 against 3 on the CPU proxy of the learning check (``benchmarks/learning.py``).

The proxy is the learning check's: its model (``CONFIG``), the denoising base, one synthetic clip, 8-step
distilled samples. Here the clip has 9 frames (3 latent frames on a 4x4 grid) and mouth boxes: the centre 2x2
cells of latent frames 0 and 1, no face on frame 2 (``write_synthetic_dataset(mouth_boxes=True)``); frames 2-6 are
spoken, so with ``loss.mouth_weight_on: spoken`` the mouth of latent frame 1 weighs ``mouth_weight``. An adapter is
trained with each weight and several training seeds, and its samples (several sampling seeds) are compared with the
clip: relative L2 distance over the whole video, over the mouth cells alone, and over the audio. The proxy's
"mouth" is random numbers like the rest of the clip, so this measures what the weight does to the optimisation
(does the weighted region fit sooner, at what cost elsewhere), not lip-sync.

    python benchmarks/mouth_weight.py [--steps 2000] [--seeds 3] [--samples 4] [--weights 1 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from learning import CONFIG, proxy_recipe

from hhtune import adapters
from hhtune.contract import AUDIO_LATENTS, MOUTH_BOXES, NO_MOUTH, TEXT_EMBEDS, VIDEO_LATENTS
from hhtune.model import save_checkpoint
from hhtune.sampling.generate import model_velocity_fn
from hhtune.sampling.samplers import sample_distilled
from hhtune.training import TrainingDataset, build_model, train
from hhtune.training.synthetic import denoising_base, write_synthetic_dataset


def _recipe(work: Path, dataset: Path, *, weight: float, seed: int, steps: int) -> object:
    return proxy_recipe(work / "base", dataset, work / f"run-w{weight:g}-s{seed}", steps=steps, seed=seed,
                        loss={"mouth_weight": weight, "mouth_weight_on": "spoken"})


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def distances(model: torch.nn.Module, row: dict, samples: int) -> dict[str, float]:
    """Median relative L2 distances of ``samples`` 8-step samples to the clip ``row``: video, mouth cells, audio."""
    video = torch.tensor(np.asarray(row[VIDEO_LATENTS]))
    audio = torch.tensor(np.asarray(row[AUDIO_LATENTS]))
    text = torch.tensor(np.asarray(row[TEXT_EMBEDS]))[None]
    mouth = torch.zeros(video.shape[1:], dtype=torch.bool)
    for t, (x0, y0, x1, y1) in enumerate(row[MOUTH_BOXES]):
        if (x0, y0, x1, y1) != NO_MOUTH:
            mouth[t, y0:y1, x0:x1] = True
    out: dict[str, list[float]] = {"video": [], "mouth": [], "audio": []}
    for s in range(samples):
        v, a = sample_distilled(model_velocity_fn(model, text, text.shape[1]), (1, *video.shape), (1, *audio.shape),
                                generator=torch.Generator().manual_seed(1000 + s))  # fmt: skip
        out["video"].append(_relative(v[0], video))
        out["mouth"].append(_relative(v[0][:, mouth], video[:, mouth]))
        out["audio"].append(_relative(a[0], audio))
    return {k: statistics.median(v) for k, v in out.items()}


def compare(work: Path, *, weights: list[float], seeds: int, steps: int, samples: int,
            log=print) -> dict[str, dict[str, float]]:  # fmt: skip
    """Distances of the base and of an adapter per ``(weight, training seed)``; keys ``base`` and ``w3-s0`` etc."""
    save_checkpoint(denoising_base(CONFIG, seed=0), work / "base")
    dataset = write_synthetic_dataset(work / "dataset", clips=1, frames=9, latent_hw=(4, 4), text_len=(6, 6),
                                      text_channels=CONFIG.text_in_channels, seed=0, mouth_boxes=True)  # fmt: skip
    row = TrainingDataset(dataset).ds[0]
    recipe = _recipe(work, dataset, weight=1.0, seed=0, steps=steps)
    results = {"base": distances(build_model(recipe.model).eval(), row, samples)}
    for weight in weights:
        for seed in range(seeds):
            recipe = _recipe(work, dataset, weight=weight, seed=seed, steps=steps)
            t0 = time.perf_counter()
            run = train(recipe)
            with torch.no_grad():
                model = adapters.load(run / "adapter", build_model(recipe.model)).eval()
                results[f"w{weight:g}-s{seed}"] = distances(model, row, samples)
            log(f"mouth_weight {weight:g} seed {seed}: {results[f'w{weight:g}-s{seed}']} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return results


def table(results: dict[str, dict[str, float]], weights: list[float]) -> str:
    """A Markdown table: per weight, mean and spread (min-max) over training seeds of each distance."""
    lines = ["| mouth_weight | video distance | mouth distance | audio distance |", "| --- | --- | --- | --- |"]
    base = results["base"]
    lines.append(f"| base (no adapter) | {base['video']:.3f} | {base['mouth']:.3f} | {base['audio']:.3f} |")
    for weight in weights:
        runs = [v for k, v in results.items() if k.startswith(f"w{weight:g}-")]
        cells = [f"{statistics.mean(r[k] for r in runs):.3f} ({min(r[k] for r in runs):.3f}-"
                 f"{max(r[k] for r in runs):.3f})" for k in ("video", "mouth", "audio")]  # fmt: skip
        lines.append(f"| {weight:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per weight")
    parser.add_argument("--samples", type=int, default=4, help="sampling seeds per adapter")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 3.0])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = compare(Path(tmp), weights=args.weights, seeds=args.seeds, steps=args.steps, samples=args.samples)
    print(f"{args.steps} steps, {args.seeds} training seeds, median of {args.samples} samples each; "
          "mean (min-max) over seeds of the relative L2 distance to the clip")
    print(table(results, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
