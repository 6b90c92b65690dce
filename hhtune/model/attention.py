"""Attention kernels: which one runs (``model.attention``) and the mask each one takes.

Every sample attends to itself only, and padding is attended by nothing. The model
slices padding off where it can (at batch 1 nothing is left to mask), so most calls are
unmasked and run SDPA with no mask: torch's flash kernel on CUDA. What still needs a mask
(a batch of ragged rows, several samples packed in one sequence) is described once per
forward by :class:`TokenGroups` and turned into an :class:`AttentionPlan` for one kernel:

* ``flash``: FlashAttention's varlen kernel on the valid tokens gathered into one packed
  sequence (CUDA with ``flash-attn`` installed, bf16/fp16 compute);
* ``flex``: FlexAttention with a block mask (compiled on CUDA; forward only on the CPU,
  where torch has no Flex backward);
* ``sdpa``: SDPA with a dense bool mask, on the CPU only. On CUDA a mask can send SDPA to
  its math kernel, which materialises ``[B, heads, L, L]`` scores (tens of GB per layer at
  540p), so a masked SDPA call is refused there, and unmasked calls are restricted to the
  fused kernels so that a missing kernel raises instead of falling back silently.

``auto`` takes flash, else flex on CUDA, and masked SDPA (a fused CPU kernel) on the CPU.

The ``local_attn_layers`` of the 1080p SR model attend within a frame window
(:class:`LocalWindow`; the official ``calc_local_qk_range``): a video token sees the video
tokens of the frames at most ``frame_receptive_field`` latent frames away and every audio
and text token; audio and text tokens see everything. Its plan (``AttentionPlan.local``)
never builds a dense ``[L, L]`` mask:

* ``sdpa`` (the CPU, and CUDA without padding): one SDPA call per query frame over its key
  window and the audio+text keys, and one for the audio+text queries; on CUDA these calls
  are unmasked and run the fused (flash) kernels;
* ``flex`` (CUDA with padding, or ``model.attention = flex``): a block mask assembled from
  the ranges block by block (:func:`local_block_mask`).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from ..cli import MissingDependencyError

AttentionBackend = Literal["auto", "sdpa", "flex", "flash"]
Kernel = Literal["sdpa", "flex", "flash"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flex", "flash")
_HALF = (torch.bfloat16, torch.float16)
_FLEX_BLOCK = 128  # FlexAttention's default block size (query and key)
# The fused CUDA kernels; SDPBackend.MATH is deliberately absent.
_CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


@dataclass(frozen=True)
class TokenGroups:
    """Who attends to whom: a token sees the tokens of its row with the same id; id ``-1`` is padding.

    ``ids`` is ``[B, L]`` (int64). ``one_per_row`` says each row holds one sample, so the dense
    SDPA mask can be a key-padding mask ``[B, 1, 1, L]`` instead of ``[B, 1, L, L]``.
    """

    ids: Tensor
    one_per_row: bool

    @classmethod
    def padded_rows(cls, valid: Tensor) -> TokenGroups:
        """One sample per row with ``valid [B, L]`` (bool) marking its real tokens."""
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)
        return cls(torch.where(valid, rows, torch.full_like(rows, -1)), one_per_row=True)

    @classmethod
    def packed(cls, sample_ids: Tensor) -> TokenGroups:
        """Several samples in one sequence: ``sample_ids [L]`` names each token's sample."""
        return cls(sample_ids.long()[None], one_per_row=False)


@dataclass(frozen=True)
class LocalWindow:
    """The frame window of the local layers over rows laid out ``[video | audio | text]``.

    Video tokens ``0..num_video-1`` come frame by frame, ``tokens_per_frame`` each. ``valid``
    (``[B, L]`` bool) marks real tokens when rows are padded, ``None`` when all are real.
    """

    num_video: int
    tokens_per_frame: int
    frame_receptive_field: int
    length: int  # tokens per row, padding included
    valid: Tensor | None = None

    @property
    def num_frames(self) -> int:
        """Latent frames of the video."""
        return self.num_video // self.tokens_per_frame

    def frame_keys(self, frame: int) -> tuple[int, int]:
        """``[start, end)`` of the video keys that the queries of ``frame`` see."""
        lo = max(0, frame - self.frame_receptive_field)
        hi = min(self.num_frames, frame + self.frame_receptive_field + 1)
        return lo * self.tokens_per_frame, hi * self.tokens_per_frame


def local_qk_ranges(window: LocalWindow) -> tuple[Tensor, Tensor]:
    """The window as ``(q_ranges, k_ranges)`` ``[n, 2]`` int32 pairs, in the order of the official
    ``calc_local_qk_range``: a query sees the union of the key ranges of the pairs that hold it."""
    nv, tpf, length = window.num_video, window.tokens_per_frame, window.length
    q = [(f * tpf, (f + 1) * tpf) for f in range(window.num_frames)] + [(0, nv), (nv, length)]
    k = [window.frame_keys(f) for f in range(window.num_frames)] + [(nv, length), (0, length)]
    return torch.tensor(q, dtype=torch.int32), torch.tensor(k, dtype=torch.int32)


@dataclass(frozen=True)
class AttentionPlan:
    """What every layer's attention call of one forward takes (built once per forward)."""

    kernel: Kernel
    mask: Tensor | None = None  # sdpa: bool, True = attend, broadcastable to [B, heads, L, L]
    block_mask: BlockMask | None = None  # flex
    index: Tensor | None = None  # flash: flat positions (in B*L) of the valid tokens, grouped by sample
    cu_seqlens: Tensor | None = None  # flash: int32 [samples + 1]
    max_seqlen: int = 0  # flash
    window: LocalWindow | None = None  # the plan of a local layer: sdpa runs frame by frame
    local: AttentionPlan | None = None  # the plan the local layers take (None: the model has none)

    def with_local(self, local: AttentionPlan | None) -> AttentionPlan:
        """This plan, with ``local`` for the local layers."""
        return replace(self, local=local)


UNMASKED = AttentionPlan("sdpa")


def flash_attn_available() -> bool:
    """Whether the ``flash_attn`` package (FlashAttention 2) imports (a build for another torch does not)."""
    try:
        import flash_attn  # noqa: F401, PLC0415 -- optional dependency, probed for availability only
    except (ImportError, OSError):
        return False
    return True


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is a ``model.attention`` setting."""
    if backend not in BACKENDS:
        raise ValueError(f"model.attention = {backend!r}: allowed: {', '.join(BACKENDS)}")


def choose_kernel(backend: str, device_type: str, dtype: torch.dtype, training: bool) -> Kernel:
    """The kernel that runs masked attention for the ``model.attention`` setting ``backend``.

    Raises ``ValueError`` (naming ``model.attention``) for a combination that cannot run or,
    on CUDA, that would reach SDPA's math kernel; :class:`MissingDependencyError` when
    ``flash`` is asked for without ``flash-attn``.
    """
    check_backend(backend)
    cuda = device_type == "cuda"
    if backend == "auto":
        if not cuda:
            return "sdpa"
        return "flash" if dtype in _HALF and flash_attn_available() else "flex"
    if backend == "sdpa" and cuda:
        raise ValueError("model.attention = sdpa cannot run this batch on CUDA: its rows have different text or audio "
                         "lengths, and masked SDPA may fall back to the math kernel ([B, heads, L, L] scores). Set "
                         "model.attention to auto, flash or flex (or data.batch_size = 1)")  # fmt: skip
    if backend == "flash":
        if not cuda or dtype not in _HALF:
            raise ValueError(f"model.attention = flash needs CUDA and bf16 compute (model.compute_dtype), got "
                             f"{device_type} with {dtype}; set model.attention = auto")  # fmt: skip
        if not flash_attn_available():
            raise MissingDependencyError("model.attention = flash needs FlashAttention: pip install flash-attn "
                                         "--no-build-isolation "
                                         "(or set model.attention = auto to use FlexAttention)")  # fmt: skip
    if backend == "flex" and not cuda and training:
        raise ValueError("model.attention = flex cannot train on the CPU (torch has no FlexAttention backward there); "
                         "set model.attention = auto")  # fmt: skip
    return backend  # type: ignore[return-value]


def plan_attention(groups: TokenGroups | None, backend: str, dtype: torch.dtype, training: bool) -> AttentionPlan:
    """The plan of one forward: unmasked SDPA without ``groups``, else the chosen kernel's
    (see :func:`choose_kernel`)."""
    if groups is None:
        return UNMASKED
    kernel = choose_kernel(backend, groups.ids.device.type, dtype, training)
    return {"sdpa": sdpa_plan, "flex": flex_plan, "flash": flash_plan}[kernel](groups)


def plan_forward(groups: TokenGroups | None, window: LocalWindow | None, backend: str, dtype: torch.dtype,
                 training: bool, device: torch.device) -> AttentionPlan:  # fmt: skip
    """The plan of one forward: :func:`plan_attention`'s, and with a ``window`` (a model with local
    layers) the local layers' plan in ``local`` (:func:`plan_local_attention`)."""
    plan = plan_attention(groups, backend, dtype, training)
    if window is None:
        return plan
    return plan.with_local(plan_local_attention(window, backend, dtype, training, device))


def plan_local_attention(window: LocalWindow, backend: str, dtype: torch.dtype, training: bool,
                         device: torch.device) -> AttentionPlan:  # fmt: skip
    """The plan of the local layers: frame-by-frame SDPA where it needs no mask or runs on the CPU,
    else (or with ``model.attention = flex``) a FlexAttention block mask built from the ranges."""
    check_backend(backend)
    cuda = device.type == "cuda"
    if backend == "flex" or (cuda and window.valid is not None):
        choose_kernel("sdpa" if backend == "sdpa" else "flex", device.type, dtype, training)  # the refusals
        return AttentionPlan("flex", block_mask=local_block_mask(window, device), window=window)
    if backend == "flash":
        choose_kernel(backend, device.type, dtype, training)
    return AttentionPlan("sdpa", window=window)


def local_block_mask(window: LocalWindow, device: torch.device,
                     block: int = _FLEX_BLOCK) -> BlockMask:  # fmt: skip
    """The local window as a FlexAttention block mask, built from ranges (never a dense ``[L, L]`` mask).

    A key block is *full* for a query block when every query of the block sees all ``block`` keys of it,
    *partial* when some query sees some of it; partial blocks are resolved token by token by the mask_mod.
    Padding queries see nothing (output 0), as in :func:`flex_plan`. Memory: ``[B, L, L / block]`` counts.
    """
    nv, tpf, frf, length = window.num_video, window.tokens_per_frame, window.frame_receptive_field, window.length
    valid = (torch.ones(1, length, dtype=torch.bool) if window.valid is None else window.valid).to(device)
    pos = torch.arange(length, device=device)
    frame = torch.where(pos < nv, pos // tpf, -1)
    # each query's video key interval: its frame window, or all video for audio and text queries
    lo = torch.where(frame >= 0, (frame - frf).clamp(min=0) * tpf, 0)
    hi = torch.where(frame >= 0, ((frame + frf + 1) * tpf).clamp(max=nv), nv)
    nb = -(-length // block)
    starts = torch.arange(nb, device=device) * block
    ends = (starts + block).clamp(max=length)
    video_seen = (torch.minimum(hi[:, None], ends) - torch.maximum(lo[:, None], starts)).clamp(min=0).int()
    cum = F.pad((valid & (pos >= nv)).int().cumsum(1, dtype=torch.int32), (1, 0))
    seen = video_seen[None] + (cum[:, ends] - cum[:, starts])[:, None]  # [B, L, NB]: real keys seen per block
    pad_q = nb * block - length
    seen = F.pad(torch.where(valid[:, :, None], seen, 0), (0, 0, 0, pad_q)).reshape(-1, nb, block, nb)
    full = (seen == block).all(2)  # as create_block_mask: a block with padding or past the end is never full
    partial = (seen > 0).any(2) & ~full
    return BlockMask.from_kv_blocks(*_blocks(partial), *_blocks(full), BLOCK_SIZE=block,
                                    mask_mod=_local_mask_mod(frame, valid, frf), seq_lengths=(length, length))


def _blocks(sel: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, QB, KB]`` bool -> FlexAttention's ``(num_blocks [B, 1, QB], indices [B, 1, QB, KB])`` int32."""
    counts = sel.sum(-1, dtype=torch.int32)
    order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[:, None], order[:, None]


def _local_mask_mod(frame: Tensor, valid: Tensor, frf: int):
    rows = valid.shape[0]

    def local(b, h, q, k):  # noqa: ARG001 -- mask_mod signature fixed by FlexAttention
        fq, fk = frame[q], frame[k]
        near = (fq < 0) | (fk < 0) | ((fq - fk).abs() <= frf)
        row = b if rows > 1 else 0
        return valid[row, q] & valid[row, k] & near

    return local


def sdpa_plan(groups: TokenGroups) -> AttentionPlan:
    """A dense bool mask; a padding query sees every real key of its row (its output is discarded, but never NaN)."""
    ids = groups.ids
    if groups.one_per_row:
        return AttentionPlan("sdpa", mask=(ids >= 0)[:, None, None, :])
    same = (ids[:, :, None] == ids[:, None, :]) | (ids[:, :, None] < 0)
    return AttentionPlan("sdpa", mask=(same & (ids[:, None, :] >= 0))[:, None])


def flex_plan(groups: TokenGroups) -> AttentionPlan:
    """A FlexAttention block mask (built once, shared by every layer); padding queries see nothing (output 0)."""
    ids = groups.ids

    def same_sample(b, h, q, k):  # noqa: ARG001 -- mask_mod signature fixed by create_block_mask
        return (ids[b, k] >= 0) & (ids[b, q] == ids[b, k])

    b, length = ids.shape
    return AttentionPlan("flex", block_mask=create_block_mask(same_sample, b, None, length, length, device=ids.device))


def flash_plan(groups: TokenGroups) -> AttentionPlan:
    """The valid tokens' flat positions grouped by sample, and their ``cu_seqlens``; padding outputs 0."""
    ids = groups.ids
    b = ids.shape[0]
    rows = torch.arange(b, device=ids.device)[:, None] * (int(ids.max()) + 1)
    keys = torch.where(ids >= 0, ids + rows, -1).flatten()  # (row, sample) -> one key; padding stays -1
    order = torch.argsort(keys, stable=True)
    index = order[keys[order] >= 0]
    counts = torch.unique_consecutive(keys[index], return_counts=True)[1]
    cu = F.pad(torch.cumsum(counts, 0), (1, 0)).to(torch.int32)
    return AttentionPlan("flash", index=index, cu_seqlens=cu, max_seqlen=int(counts.max()))


def attend(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
    """Softmax attention of ``q [B, L, Hq, D]`` over ``k, v [B, L, Hkv, D]`` (GQA) -> ``[B, L, Hq, D]``."""
    if plan.kernel == "flash":
        return _flash(q, k, v, plan)
    if plan.kernel == "sdpa" and plan.window is not None:
        return _local_sdpa(q, k, v, plan.window)
    gqa = q.shape[2] != k.shape[2]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if plan.kernel == "flex":
        out = _flex_fn(q.is_cuda)(qt, kt, vt, block_mask=plan.block_mask, enable_gqa=gqa)
        return out.transpose(1, 2)
    if plan.mask is not None and q.is_cuda:
        raise ValueError("masked SDPA on CUDA may run the math kernel; set model.attention to auto, flash or flex")
    if q.is_cuda and gqa and q.dtype not in _HALF:  # the fp32 (memory-efficient) kernel may not take enable_gqa
        kt, vt = (t.repeat_interleave(qt.shape[1] // t.shape[1], dim=1) for t in (kt, vt))
        gqa = False
    with sdpa_kernel(_CUDA_SDPA_BACKENDS) if q.is_cuda else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=plan.mask, enable_gqa=gqa)
    return out.transpose(1, 2)


def _local_sdpa(q: Tensor, k: Tensor, v: Tensor, window: LocalWindow) -> Tensor:
    """The local window frame by frame: each query frame's SDPA sees its key window and the audio+text keys."""
    nv, tpf = window.num_video, window.tokens_per_frame
    valid = window.valid
    rest_k, rest_v = k[:, nv:], v[:, nv:]
    out = torch.empty_like(q)
    for f in range(window.num_frames):
        lo, hi = window.frame_keys(f)
        mask = None if valid is None else F.pad(valid[:, nv:], (hi - lo, 0), value=True)[:, None, None]
        chunk = AttentionPlan("sdpa", mask=mask)
        out[:, f * tpf:(f + 1) * tpf] = attend(q[:, f * tpf:(f + 1) * tpf], torch.cat([k[:, lo:hi], rest_k], 1),
                                               torch.cat([v[:, lo:hi], rest_v], 1), chunk)  # fmt: skip
    if q.shape[1] > nv:
        mask = None if valid is None else valid[:, None, None]
        out[:, nv:] = attend(q[:, nv:], k, v, AttentionPlan("sdpa", mask=mask))
    return out


def _flex_fn(cuda: bool):
    """Flex outside a compiled region runs unfused (scores materialised) unless compiled: compile it on CUDA."""
    if cuda and not torch.compiler.is_compiling():
        return _compiled_flex()
    return flex_attention


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention)


def _flash(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
    from flash_attn import flash_attn_varlen_func  # noqa: PLC0415 -- optional dependency flash_attn

    b, length, heads, dim = q.shape

    def packed(t: Tensor) -> Tensor:
        return t.reshape(b * length, *t.shape[2:]).index_select(0, plan.index)

    out = flash_attn_varlen_func(packed(q), packed(k), packed(v), plan.cu_seqlens, plan.cu_seqlens, plan.max_seqlen,
                                 plan.max_seqlen,
                                 deterministic=torch.are_deterministic_algorithms_enabled())  # fmt: skip
    full = out.new_zeros(b * length, heads, dim).index_copy(0, plan.index, out)
    return full.reshape(b, length, heads, dim)
