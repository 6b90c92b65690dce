"""Per-clip results kept while the clip's array lives: an evaluation scores the same training clips against
every checkpoint and strength, and their voice and face embeddings need computing once."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np


class ArrayMemo:
    """Values computed from a numpy array, keyed by the array's identity (arrays are unhashable) and dropped
    when the array is freed. An array changed in place keeps its old value: clips are read, not edited."""

    def __init__(self) -> None:
        self._values: dict[int, Any] = {}

    def get(self, array: np.ndarray, compute: Callable[[], Any]) -> Any:
        """The value for ``array``, computing it on first use."""
        key = id(array)
        if key not in self._values:
            self._values[key] = compute()
            weakref.finalize(array, self._values.pop, key, None)
        return self._values[key]

    def put(self, array: np.ndarray, value: Any) -> None:
        """Keep ``value`` for ``array`` (computed elsewhere, e.g. by a background worker on a copy of it)."""
        self.get(array, lambda: value)
