"""Streaming safetensors I/O for merges: read headers, copy byte ranges, write tensor by tensor.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once, which for
a merged 15B shard (or the 30 GB single-file variant) means holding a shard-sized copy.
The format is simple (8-byte header length, JSON header with byte offsets, raw data), and
every output shape and dtype is known from the base's headers before any weight is read,
so we write the header first and then stream each tensor, copying unchanged tensors
byte for byte with ``os.sendfile``. Peak memory is one tensor, not one shard.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_path

CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip
DTYPES = {v: k for k, v in CODES.items()}
_CHUNK = 64 << 20


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: its key, dtype code (``"BF16"``), shape and byte range in the data."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int = 0
    end: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


def read_entries(path: str | os.PathLike) -> tuple[list[Entry], int]:
    """The tensors of a safetensors file in data order, and the file offset where the data starts."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    entries = [Entry(k, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in header.items()]
    return sorted(entries, key=lambda e: e.begin), 8 + n


def read_tensor(file: str | os.PathLike, entry: Entry, data_start: int) -> torch.Tensor:
    """One tensor read with plain file reads into a fresh buffer.

    Not through ``safe_open``'s memory map: its pages would count as this process's
    resident memory, and a merge would look (and, under memory pressure, act) like it
    holds the whole shard.
    """
    t = torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(bytearray())
    with open(file, "rb", buffering=0) as f:
        f.seek(data_start + entry.begin)
        done = 0
        while done < entry.nbytes:
            n = f.readinto(view[done : done + _CHUNK])
            if not n:
                raise OSError(f"{file}: truncated while reading {entry.key}")
            done += n
    return t


def tensor_chunks(t: torch.Tensor) -> Iterator[memoryview]:
    """The raw little-endian bytes of ``t`` (moved to the CPU, made contiguous) as buffers."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    data = memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
    for start in range(0, len(data), _CHUNK):
        yield data[start : start + _CHUNK]


@dataclass(frozen=True)
class RawCopy:
    """Bytes ``[begin, end)`` of ``file``, copied unchanged (an unmodified tensor)."""

    file: Path
    begin: int
    end: int


def write_streaming(path: str | os.PathLike, layout: list[Entry],
                    data: Iterable[tuple[str, RawCopy | Iterable[memoryview]]],
                    metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write a safetensors file whose tensors are ``layout``, taking each one's bytes from ``data`` in order.

    ``data`` yields ``(key, RawCopy | buffers)`` lazily, in the order of ``layout``; the
    file appears under its final name only when complete (written beside it, then renamed).
    """
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    for e in layout:
        header[e.key] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
    path = Path(path)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, len(blob).to_bytes(8, "little") + blob)
            items = iter(data)
            for e in layout:
                key, source = next(items, (None, None))
                if key != e.key:
                    raise RuntimeError(f"streaming writer expected {e.key!r} next, got {key!r}")
                if isinstance(source, RawCopy):
                    written = _copy_range(fd, source)
                else:
                    written = sum(_write_all(fd, b) for b in source)
                if written != e.nbytes:
                    raise RuntimeError(f"{e.key}: wrote {written} bytes, the header promises {e.nbytes}")
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _write_all(fd: int, buf) -> int:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


def _copy_range(fd: int, src: RawCopy) -> int:
    count = src.end - src.begin
    with open(src.file, "rb", buffering=0) as f:
        done = 0
        try:
            while done < count:  # in-kernel copy, as shutil.copyfile does on Linux
                sent = os.sendfile(fd, f.fileno(), src.begin + done, count - done)
                if sent == 0:
                    break
                done += sent
        except (AttributeError, OSError):  # no sendfile for these files: copy through a buffer
            f.seek(src.begin + done)
            while done < count:
                chunk = f.read(min(_CHUNK, count - done))
                if not chunk:
                    break
                done += _write_all(fd, chunk)
    return done
