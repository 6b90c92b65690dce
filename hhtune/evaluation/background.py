"""Scoring sampled clips in background processes while the next clip samples.

Serially, every metric's costly per-clip work (DNSMOS, face landmarks, face and voice embeddings: about 1.2 CPU
seconds a 2 s clip) would follow the sampling it judges. Here worker processes, each loading the metric models
once, compute it (:func:`~.metrics.per_clip.compute`) as soon as a clip is decoded, and this process's per-clip
caches receive the values; scoring a variant then only aggregates, with the same numbers as serial scoring.
Processes, not threads: dlib and speechmos hold the GIL for much of their work, and threads slowed sampling down.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from .clips import AVClip
from .metrics import per_clip


class BackgroundScorer:
    """Computes the per-clip part of the metrics of each :meth:`submit`\\ ted clip in ``workers`` processes.

    The workers start at once and load the metric models (:func:`~.metrics.per_clip.prepare`), so a caller that
    creates this before loading its own models overlaps the two.

    :meth:`finish` waits until every submitted clip is done and its values are in this process's caches. At
    most ``2 * workers`` clips wait at once (submit waits for the oldest beyond that), so memory stays bounded
    when sampling outruns the metrics. ``workers=0`` does nothing: the metrics compute everything when scored.
    A clip whose worker failed is left out of the caches: its metric computes it again in this process when
    scored, and fails there exactly as serial scoring does (same error, same exit code).
    """

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"metric workers must be 0 or more, got {workers}")
        self.workers = workers
        # spawn: a fork of a process holding CUDA or torch threads is unsafe
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=per_clip.prepare) if workers else None)  # fmt: skip
        self._pending: deque[tuple[AVClip, Future]] = deque()
        for _ in range(workers):  # each start spawns a worker now: its imports and models load while the DiT does
            self._pool.submit(int)

    def submit(self, clip: AVClip, metrics: Sequence[str]) -> None:
        """Start computing what ``metrics`` (names) need of ``clip``; returns at once unless 2 x workers wait."""
        if self._pool is None:
            return
        while len(self._pending) >= 2 * self.workers:
            self._collect(*self._pending.popleft())
        self._pending.append((clip, self._pool.submit(per_clip.compute, clip, tuple(metrics))))

    def finish(self) -> None:
        """Wait for every submitted clip; its values are then in this process's caches."""
        while self._pending:
            self._collect(*self._pending.popleft())

    def close(self) -> None:
        """Stop the workers (what is still pending is dropped)."""
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BackgroundScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _collect(clip: AVClip, future: Future) -> None:
        if future.exception() is None:  # a failure is raised by the metric itself, in this process (see above)
            per_clip.remember(clip, future.result())
