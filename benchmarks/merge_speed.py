"""Merging an adapter into a 15B-shaped checkpoint: time vs a plain copy, peak memory vs a shard.

Scaled down for a small CPU machine: the base has the 15B model's widths (hidden 5120,
40 query / 8 kv heads, so every tensor is 15B-sized) but only ``--layers`` shared layers
(~545 MB each in bf16), written with random weights as ``--shard-gb`` shards; the
adapter is rank 32 on every block linear. Ratios, not absolute numbers, carry over to
the full model: the merge streams tensor by tensor, so its memory depends on the largest
tensor (and the adapter), not on the number or size of shards.

Two floors: ``shutil.copytree`` (an in-kernel copy, nothing passes through user space and
nothing is synced) and a byte copy (read and write in 64 MiB chunks, fsync per file, as
every file the export writes is synced before it is renamed into place). Each
measurement runs in a fresh child process (best of ``--repeats``); peak memory is the
child's ``VmHWM`` (``ru_maxrss`` would include the parent's pages inherited at fork), and
its resident memory after imports is reported so the merge's own working set shows.

    python benchmarks/merge_speed.py [--layers 3] [--shard-gb 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss() -> int:
    """Peak resident memory of this process (``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _byte_copy(base: str, out: str) -> None:
    os.makedirs(out)
    for f in sorted(Path(base).iterdir()):
        with open(f, "rb") as src, open(Path(out) / f.name, "wb") as dst:
            while chunk := src.read(64 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())


def _child(kind: str, base: str, adapter: str, out: str) -> None:
    if "copy" not in kind:
        from hhtune.export import export_adapter  # noqa: PLC0415 -- imports torch: counted in "after imports"
    start_rss = _rss()
    t = time.perf_counter()
    if kind == "copy":
        shutil.copytree(base, out)
    elif kind == "byte_copy":
        _byte_copy(base, out)
    else:
        export_adapter(adapter, kind, out if kind == "merged" else Path(out) / "model.safetensors", base=base)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak": _rss(), "after_imports": start_rss}))


def _measure(kind: str, base: Path, adapter: Path, out: Path, repeats: int) -> dict:
    best = None
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        res = subprocess.run([sys.executable, __file__, "--child", kind, str(base), str(adapter), str(out)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(res.stdout.strip().splitlines()[-1])
        best = r if best is None or r["seconds"] < best["seconds"] else best
        shutil.rmtree(out, ignore_errors=True)
    return best


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--shard-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    from hhtune.adapters.inject import add_lora  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.adapters.settings import LoraSettings  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.export import export_adapter  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.model import HappyHorseTransformer, ModelConfig, save_checkpoint  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    full = ModelConfig.preset("15b").model_dump()
    cfg = ModelConfig(**{**full, "num_layers": args.layers, "mm_layers": [], "gelu7_layers": []})
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = HappyHorseTransformer(cfg)
        base = save_checkpoint(model, tmp / "base", max_shard_size=int(args.shard_gb * 2**30))
        peft_model = add_lora(model, LoraSettings(rank=32, init="gaussian"))
        adapter = export_adapter(peft_model, "comfyui", tmp / "adapter.safetensors")
        del model, peft_model
        shards = sorted(base.glob("model*.safetensors"))
        largest, total = max(f.stat().st_size for f in shards), sum(f.stat().st_size for f in shards)
        res = {kind: _measure(kind, base, adapter, tmp / kind, args.repeats)
               for kind in ("copy", "byte_copy", "merged", "merged_single")}
        print(f"base: {args.layers} shared layers at 15B widths, {total / 2**30:.2f} GiB in {len(shards)} shards, "
              f"largest {largest / 2**30:.2f} GiB; adapter rank 32 on {4 * args.layers} linears "
              f"({adapter.stat().st_size / 2**20:.0f} MiB)")  # fmt: skip
        print(f"copytree: {res['copy']['seconds']:.2f} s; byte copy + fsync: {res['byte_copy']['seconds']:.2f} s, "
              f"peak host memory {res['byte_copy']['peak'] / largest:.2f}x the largest shard")  # fmt: skip
        for kind in ("merged", "merged_single"):
            r = res[kind]
            print(f"{kind}: {r['seconds']:.2f} s = {r['seconds'] / res['copy']['seconds']:.2f}x copytree, "
                  f"{r['seconds'] / res['byte_copy']['seconds']:.2f}x the byte copy; "
                  f"peak host memory {r['peak'] / largest:.2f}x the largest shard "
                  f"({(r['peak'] - r['after_imports']) / largest:.2f}x above the {r['after_imports'] / 2**20:.0f} MiB "
                  "the interpreter and torch hold after imports)")  # fmt: skip


if __name__ == "__main__":
    main()
