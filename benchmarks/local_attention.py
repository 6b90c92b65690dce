"""The local frame-window attention of the 1080p SR model on the CPU, side by side with dense masked attention.

One attention call (the 15B model's head_dim, a few heads) over rows laid out like the SR model's:
``--frames`` latent frames of ``--tokens-per-frame`` video tokens, then audio and text. The local
path (``AttentionPlan(window=...)``: one SDPA call per query frame over its key window and the
audio+text keys) runs against SDPA with the equivalent dense ``[L, L]`` bool mask, built once from the
same ranges and not timed. Both give the same output (checked); the ratio is dense time / local time.

The default shape is a 5 s clip (32 latent frames) with the official window (11 frames each side) and
the tokens of a frame scaled down for a CPU (1080p has 60 x 34 = 2040 per frame). The dense mask the
local path avoids is also reported at the real 1080p size, where it alone would take gigabytes.

    python benchmarks/local_attention.py [--frames 32] [--tokens-per-frame 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import best_time

from hhtune.model.attention import AttentionPlan, LocalWindow, attend, local_qk_ranges

_1080P_TOKENS_PER_FRAME = (1088 // 32) * (1920 // 32)  # 16x VAE stride, then the 2x2 patch


def dense_mask(window: LocalWindow) -> torch.Tensor:
    """The ``[L, L]`` bool mask of the window's ranges (what the local path never builds)."""
    q_r, k_r = local_qk_ranges(window)
    mask = torch.zeros(window.length, window.length, dtype=torch.bool)
    for (qs, qe), (ks, ke) in zip(q_r.tolist(), k_r.tolist()):
        mask[qs:qe, ks:ke] = True
    return mask


def run(args: argparse.Namespace) -> dict[str, float]:
    """Time both paths on one shape; return the measurements."""
    torch.manual_seed(0)
    nv = args.frames * args.tokens_per_frame
    window = LocalWindow(nv, args.tokens_per_frame, args.frame_receptive_field, nv + args.audio + args.text)
    q = torch.randn(1, window.length, args.heads, args.head_dim)
    k, v = (torch.randn(1, window.length, args.kv_heads, args.head_dim) for _ in range(2))
    local = AttentionPlan("sdpa", window=window)
    dense = AttentionPlan("sdpa", mask=dense_mask(window))
    diff = float((attend(q, k, v, local) - attend(q, k, v, dense)).abs().max())
    t_local = best_time(lambda: attend(q, k, v, local), args.repeats)
    t_dense = best_time(lambda: attend(q, k, v, dense), args.repeats)
    seen = float(dense.mask.float().mean())
    full_1080p = args.frames * _1080P_TOKENS_PER_FRAME + args.audio + args.text
    return {"tokens": window.length, "frames": args.frames, "keys_seen_fraction": round(seen, 3),
            "local_s": round(t_local, 4), "dense_s": round(t_dense, 4), "dense_over_local": round(t_dense / t_local, 2),
            "max_abs_diff": diff, "dense_mask_gb_at_1080p": round(full_1080p**2 / 1e9, 2)}  # fmt: skip


def main_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: None reads ``sys.argv``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32, help="latent frames (32: a 5 s clip)")
    parser.add_argument("--tokens-per-frame", type=int, default=64)
    parser.add_argument("--frame-receptive-field", type=int, default=11)
    parser.add_argument("--audio", type=int, default=125)
    parser.add_argument("--text", type=int, default=100)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main() -> None:
    result = run(main_args())
    print(json.dumps(result))
    print(f"local attention: {result['dense_over_local']}x the speed of dense masked SDPA at {result['tokens']} "
          f"tokens ({result['frames']} frames, {result['keys_seen_fraction']:.0%} of the keys seen); the dense mask "
          f"at 1080p would take {result['dense_mask_gb_at_1080p']} GB")  # fmt: skip


if __name__ == "__main__":
    main()
