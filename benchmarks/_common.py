"""Shared pieces of the benchmarks: FLOP counts, a matmul ceiling and a timer."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from hhtune.model import ModelConfig


def forward_flops(cfg: ModelConfig, tokens: int) -> float:
    """Matmul FLOPs of one forward over ``tokens`` tokens of one sample (linears + attention)."""
    total = 0.0
    for i in range(cfg.num_layers):
        total += 2 * tokens * sum(n_in * n_out for n_in, n_out in cfg.linear_features(i).values())  # linears
        total += 4 * tokens * tokens * cfg.q_width  # QK^T and PV
    return total


def matmul_ceiling(dtype: torch.dtype, device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul in ``dtype``: the ceiling the model is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = best_time(lambda: a @ b, repeats, device)
    return 2 * n**3 / seconds


def best_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Best wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def parse_args(doc: str | None) -> argparse.Namespace:
    """The benchmarks' shared command line: --device, --presets, --repeats."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.presets = args.presets or (["15b"] if args.device == "cuda" else ["tiny", "mid"])
    return args
