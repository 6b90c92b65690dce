"""Reading a data_prep dataset and cutting it into bucketed, reproducible micro-batches.

The order of micro-batches is a pure function of ``(seed, global micro-batch index)``:
process ``r`` of ``W`` takes indices ``r, r+W, r+2W, ...``. That makes resuming exact
(skip what was consumed) and makes W processes see the same samples per optimizer step
as one process with W times the gradient accumulation.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..contract import (
    AUDIO_LATENTS,
    HAS_AUDIO_COLUMN,
    LATENT_COLUMNS,
    MOUTH_BOXES,
    REFERENCE_LATENTS,
    SR_VIDEO_LATENTS,
    TEXT_EMBEDS,
    VIDEO_LATENTS,
)
from ..dataset import DatasetError, open_dataset_dir
from ..recipe import DataSection

_ARRAY_COLUMNS = (*LATENT_COLUMNS, "speech_mask")  # read as arrays by collate


@dataclass
class Batch:
    """One micro-batch; every clip shares the bucket (frame count and resolution)."""

    video: Tensor  # [B, 48, T, H, W]
    audio: Tensor  # [B, La, 64]
    audio_lengths: Tensor  # [B]
    text: Tensor  # [B, Lt, C]
    text_lengths: Tensor  # [B]
    speech_mask: Tensor  # [B, La] in [0, 1]
    reference: Tensor | None  # [B, 48, 1, H, W] where available
    has_reference: Tensor  # [B] bool
    index: int  # global micro-batch index (seeds the noise of its samples)
    has_audio: Tensor | None = None  # [B] bool: False where the footage had no audio track (audio loss masked)
    mouth_boxes: Tensor | None = None  # [B, T, 4] int64 latent cells (contract.MOUTH_BOXES) when the dataset has them
    sr_video: Tensor | None = None  # [B, 48, T, H', W']: the clips at the SR size, where the dataset has them

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor on ``device`` (copies to CUDA are asynchronous from pinned memory)."""
        non_blocking = torch.device(device).type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory (called by a ``DataLoader`` with ``pin_memory=True``)."""
        return self._map(Tensor.pin_memory)

    def _map(self, fn) -> Batch:
        items = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: fn(v) if isinstance(v, Tensor) else v for k, v in items.items()})

    @property
    def size(self) -> int:
        return int(self.video.shape[0])


class TrainingDataset:
    """A ``DATASET_DIR`` from data_prep, validated, with bucket groups for batching."""

    def __init__(self, path: str | Path) -> None:
        opened = open_dataset_dir(path, require_encoded=True)
        self.path, self.manifest, ds = opened.path, opened.manifest, opened.dataset
        if len(ds) == 0:
            raise DatasetError(f"{self.path}: the dataset has no clips (see {self.path}/report.html for why)")
        self._has_reference = REFERENCE_LATENTS in ds.column_names
        # absent in format 1 datasets: every clip had sound
        self._has_audio = list(ds[HAS_AUDIO_COLUMN]) if HAS_AUDIO_COLUMN in ds.column_names else [True] * len(ds)
        self.has_mouth_boxes = MOUTH_BOXES in ds.column_names  # format 1, or data_prep's mouth_regions off: absent
        self.has_sr = SR_VIDEO_LATENTS in ds.column_names  # format 2, built with data_prep's sr_resolution
        self.ds = ds
        # the array columns as numpy (zero-copy from Arrow where possible), not nested Python lists
        optional = [c for c, present in ((REFERENCE_LATENTS, self._has_reference),
                                         (MOUTH_BOXES, self.has_mouth_boxes), (SR_VIDEO_LATENTS, self.has_sr))
                    if present]  # fmt: skip
        self._arrays = ds.with_format("numpy", columns=[*_ARRAY_COLUMNS, *optional])
        keys = zip(ds["num_frames"], ds["height"], ds["width"])
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(tuple(key), []).append(i)
        self.groups = dict(sorted(groups.items()))

    def __len__(self) -> int:
        return len(self.ds)

    def hold_out(self, rows: list[int]) -> None:
        """Leave ``rows`` out of every epoch (their clips are not trained on: validation prompts come from them)."""
        drop = set(rows)
        groups = {key: [r for r in members if r not in drop] for key, members in self.groups.items()}
        self.groups = {key: members for key, members in groups.items() if members}

    @property
    def text_channels(self) -> int:
        """Channels of the stored text features."""
        return int(self._arrays[0][TEXT_EMBEDS].shape[-1])

    def epoch_batches(self, epoch: int, seed: int, batch_size: int, repeat: int = 1) -> list[list[int]]:
        """Row indices of every micro-batch of one epoch, shuffled reproducibly."""
        rng = random.Random(seed * 1_000_003 + epoch)
        batches: list[list[int]] = []
        for rows in self.groups.values():
            for _ in range(repeat):
                rows = list(rows)
                rng.shuffle(rows)
                batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        return batches

    def collate(self, rows: list[int], index: int) -> Batch:
        """Stack the rows of one bucket into a :class:`Batch` (audio and text padded), as float32 tensors."""
        items = [self._arrays[i] for i in rows]
        video = torch.stack([_tensor(it[VIDEO_LATENTS]) for it in items])
        audio, audio_len = _pad([_tensor(it[AUDIO_LATENTS]) for it in items])
        text, text_len = _pad([_tensor(it[TEXT_EMBEDS]) for it in items])
        speech = torch.zeros(len(items), audio.shape[1])
        for b, it in enumerate(items):
            m = _tensor(it["speech_mask"])
            n = min(len(m), audio.shape[1])
            speech[b, :n] = m[:n]
        refs = [it.get(REFERENCE_LATENTS) if self._has_reference else None for it in items]
        has_ref = torch.tensor([r is not None for r in refs])
        reference = None
        if bool(has_ref.any()):
            reference = torch.stack([_tensor(r) if r is not None else video[b, :, :1] for b, r in enumerate(refs)])
        has_audio = torch.tensor([bool(self._has_audio[i]) for i in rows])
        mouth = None
        if self.has_mouth_boxes:
            mouth = torch.stack([torch.from_numpy(np.asarray(it[MOUTH_BOXES], dtype=np.int64)) for it in items])
        sr_video = torch.stack([_tensor(it[SR_VIDEO_LATENTS]) for it in items]) if self.has_sr else None
        return Batch(video, audio, audio_len, text, text_len, speech, reference, has_ref, index, has_audio, mouth,
                     sr_video)  # fmt: skip


def _tensor(array: np.ndarray) -> Tensor:
    """A float32 tensor sharing ``array``'s memory where it already is float32."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([s.shape[0] for s in seqs])
    out = torch.zeros(len(seqs), int(lengths.max()), seqs[0].shape[-1])
    for b, s in enumerate(seqs):
        out[b, : s.shape[0]] = s
    return out, lengths


def loader_options(section: DataSection, device: torch.device | str) -> dict[str, Any]:
    """Keyword arguments of the training ``DataLoader`` for ``section`` on ``device``.

    Worker processes (:meth:`~hhtune.recipe.DataSection.workers`) prefetch micro-batches while
    the device computes; on CUDA batches are pinned so the copy to the device is asynchronous,
    and workers persist rather than restarting.
    """
    workers = section.workers(torch.device(device).type, os.cpu_count() or 1)
    return {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda",
            "persistent_workers": workers > 0}  # fmt: skip


class MicroBatches(torch.utils.data.Dataset):
    """The micro-batches one process consumes: item ``k`` is global batch ``start + k * world``.

    A map-style dataset so a ``DataLoader`` with workers prefetches them in order.
    """

    def __init__(self, data: TrainingDataset, *, seed: int, batch_size: int, repeat: int, start: int, world: int,
                 count: int) -> None:  # fmt: skip
        self.data, self.seed, self.batch_size, self.repeat = data, seed, batch_size, repeat
        self.start, self.world, self.count = start, world, count
        self._epoch_cache: dict[int, list[list[int]]] = {}

    def __len__(self) -> int:
        return self.count

    def rows(self, global_index: int) -> list[int]:
        """Row indices of global micro-batch ``global_index``."""
        per_epoch = len(self._epoch(0))
        epoch, pos = divmod(global_index, per_epoch)
        return self._epoch(epoch)[pos]

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: self.data.epoch_batches(epoch, self.seed, self.batch_size, self.repeat)}
        return self._epoch_cache[epoch]

    def __getitem__(self, k: int) -> Batch:
        g = self.start + k * self.world
        return self.data.collate(self.rows(g), g)
