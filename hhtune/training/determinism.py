"""Deterministic kernels (``train.deterministic``): a resumed CUDA run that repeats the uninterrupted one bit for bit.

Data order, sigmas, noise, caption dropout, the schedule and the optimizer state are restored
exactly on every device. On the CPU the kernels are deterministic anyway. On CUDA several
backward kernels accumulate with atomics (SDPA's flash and memory-efficient attention,
FlashAttention's dq, scatter-adds), so without this setting a resumed run drifts from the
uninterrupted one at the level of float rounding. With it:

* ``torch.use_deterministic_algorithms(True)`` (strict): deterministic variants where torch has
  them (SDPA's flash and memory-efficient backward, index_add, scatter), an error where it has
  none; cuDNN attention is not used, and Inductor stops autotuning (compiled layers);
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: cuBLAS's deterministic workspace (set before its first use);
* cuDNN: ``deterministic = True``, ``benchmark = False``;
* FlashAttention's varlen kernel gets ``deterministic=True`` (read by :mod:`hhtune.model.attention`).
"""

from __future__ import annotations

import os

import torch


def configure_determinism(enabled: bool) -> None:
    """Switch deterministic kernels on for this process (``train.deterministic``); nothing changes when off."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
