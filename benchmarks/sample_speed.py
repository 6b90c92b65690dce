"""Sampler overhead outside the model forward, as a share of a sampling step (CPU ratios).

The 8-step distilled sampler is run twice with the same shapes: once with the real
model as its velocity function, once with a velocity function that returns a cached
output instantly. The difference of the two is the model's time; what is left of the
instant run is the sampler's own overhead (noise draws, updates, pinning).
On a GPU, pass `--device cuda --presets 15b` for DiT seconds per clip (5 s, 256p);
compare with the official report of 1.6 s DiT + 0.4 s decode on one H100.

    python benchmarks/sample_speed.py [--presets tiny mid]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args

from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.sampling import latent_shapes, model_velocity_fn, sample_distilled


def main() -> None:
    args = parse_args(__doc__)
    print(f"device {args.device}; 8-step distilled sampler, 2 s 16:9 clip at 256p")
    print(f"{'preset':6} {'overhead / step':>16}")
    for preset in args.presets:
        cfg = ModelConfig.preset(preset)
        with torch.device(args.device):
            model = HappyHorseTransformer(cfg).eval()
        vshape, ashape, _ = latent_shapes(5.0 if preset == "15b" else 2.0, "16:9", 256)
        text = torch.randn(1, 64, cfg.text_in_channels, device=args.device)
        fn = model_velocity_fn(model, text, 64)
        cached = fn(torch.randn(vshape, device=args.device), torch.randn(ashape, device=args.device))
        instant = lambda _v, _a, cached=cached: cached

        def run(velocity, vshape=vshape, ashape=ashape):  # bound now: called within this iteration
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            sample_distilled(velocity, vshape, ashape, generator=torch.Generator().manual_seed(0), device=args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        run(instant)
        full = min(run(fn) for _ in range(args.repeats))
        bare = min(run(instant) for _ in range(args.repeats))
        line = f"{preset:6} {bare / full:16.4f}"
        if args.device == "cuda":
            line += f"  DiT {full:.2f} s per clip"
        print(line)


if __name__ == "__main__":
    main()
