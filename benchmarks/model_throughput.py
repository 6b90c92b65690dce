"""Model throughput: forward and forward+backward, as a share of the machine's matmul ceiling.

CPU (default): the tiny and mid presets; every number is a ratio to a bf16 matmul
measured in the same run, so results compare across machines.
GPU (`--device cuda`): the 15b shapes with random weights on one 256p 5 s sample
(~4,300 tokens): seconds, achieved TFLOP/s as a share of the measured bf16 ceiling,
peak memory. Record GPU results in benchmarks/RESULTS.md with device and date.

    python benchmarks/model_throughput.py [--device cuda] [--presets tiny mid]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, forward_flops, matmul_ceiling, parse_args

from hhtune.contract import LatentShape
from hhtune.model import HappyHorseTransformer, ModelConfig, pack_sample

# (frames, height, width) of the sample per preset: latents [48, T, H/16, W/16], audio = frames, text 640 / 32
SHAPES = {"tiny": (33, 256, 448), "mid": (33, 256, 448), "15b": (125, 256, 448)}


def _inputs(cfg: ModelConfig, preset: str, device: str):
    frames, h, w = SHAPES[preset]
    shape = LatentShape.from_pixels(w, h, frames)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, *shape.video, generator=g).to(device)
    audio = torch.randn(1, *shape.audio, generator=g).to(device)
    text = torch.randn(1, 160 if preset == "15b" else 32, cfg.text_in_channels, generator=g).to(device)
    tokens = shape.latent_frames * (shape.latent_height // 2) * (shape.latent_width // 2) + frames + text.shape[1]
    return (video, audio, text), tokens


def measure(preset: str, device: str, repeats: int) -> dict[str, float]:
    cfg = ModelConfig.preset(preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = HappyHorseTransformer(cfg)
    args, tokens = _inputs(cfg, preset, device)
    flops = forward_flops(cfg, tokens)

    def fwd():
        with torch.no_grad():
            model(*args)

    params = [p for p in model.parameters() if p.dtype == torch.bfloat16][:4]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:  # a few trainable weights so a backward runs through the whole stack
        p.requires_grad_(True)

    def fwd_bwd():
        v, a = model(*args)
        (v.float().square().mean() + a.float().square().mean()).backward()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_f = best_time(fwd, repeats, device)
    t_fb = best_time(fwd_bwd, repeats, device)
    out = {"tokens": tokens, "fwd_s": t_f, "fwd_bwd_s": t_fb, "fwd_flops": flops / t_f,
           "fwd_bwd_flops": 3 * flops / t_fb}
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def batching(device: str, repeats: int) -> dict[str, float]:
    """Four samples of one bucket with different text lengths: padded batch vs one by one vs packed block-diagonal."""
    cfg = ModelConfig.preset("mid")
    torch.manual_seed(0)
    with torch.device(device):
        model = HappyHorseTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    lengths = [8, 32, 64, 128]
    video = torch.randn(4, 48, 5, 8, 14, generator=g).to(device)
    audio = torch.randn(4, 17, 64, generator=g).to(device)
    text = torch.randn(4, max(lengths), cfg.text_in_channels, generator=g).to(device)
    t_len = torch.tensor(lengths, device=device)
    packs = [pack_sample(video[i], audio[i], text[i, : lengths[i]]) for i in range(4)]
    x, coords, mod = (torch.cat([p[k] for p in packs]) for k in range(3))
    sizes = [p[0].shape[0] for p in packs]
    with torch.no_grad():
        padded = best_time(lambda: model(video, audio, text, text_lengths=t_len), repeats, device)
        single = best_time(lambda: [model(video[i : i + 1], audio[i : i + 1],
                                          text[i : i + 1, : lengths[i]]) for i in range(4)], repeats, device)
        packed = best_time(lambda: model.forward_packed(x, coords, mod, sample_lengths=sizes), repeats, device)
    return {"padded": padded, "one_by_one": single, "packed_block_diagonal": packed}


def main() -> None:
    args = parse_args(__doc__)
    presets = args.presets
    ceiling = matmul_ceiling(torch.bfloat16, args.device, n=4096 if args.device == "cuda" else 1024)
    print(f"device {args.device}; bf16 matmul ceiling measured in this run = 1.00")
    print(f"{'preset':6} {'tokens':>7} {'fwd tok/s':>10} {'fwd/ceil':>9} {'f+b/ceil':>9} {'f+b / fwd time':>15}")
    for preset in presets:
        r = measure(preset, args.device, args.repeats)
        line = (f"{preset:6} {r['tokens']:7d} {r['tokens'] / r['fwd_s']:10.0f} {r['fwd_flops'] / ceiling:9.3f} "
                f"{r['fwd_bwd_flops'] / ceiling:9.3f} {r['fwd_bwd_s'] / r['fwd_s']:15.2f}")  # fmt: skip
        if args.device == "cuda":
            line += (f"  fwd {r['fwd_s']:.3f}s f+b {r['fwd_bwd_s']:.3f}s {r['fwd_flops'] / 1e12:.0f} TFLOP/s "
                     f"peak {r['peak_gib']:.1f} GiB")
        print(line)
    b = batching(args.device, args.repeats)
    print("\nbatching 4 samples (text 8/32/64/128 tokens), time relative to the padded batch:")
    for k, v in b.items():
        print(f"  {k:22} {v / b['padded']:.2f}")


if __name__ == "__main__":
    main()
