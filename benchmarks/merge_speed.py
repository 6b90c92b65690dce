"""Merging an adapter into a 15B-shaped checkpoint shard by shard: time vs a plain copy, peak memory vs a shard.

The base has the 15B model's widths (hidden 5120, 40 query / 8 kv heads) but only
`--layers` shared layers (each ~545 MB in bf16), written as 1 GB shards with random
weights; the adapter is rank 32 on every block linear. Both measurements run in
child processes so their peak resident memory can be read separately.

    python benchmarks/merge_speed.py [--layers 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(kind: str, base: str, adapter: str, out: str) -> None:
    t = time.perf_counter()
    if kind == "copy":
        shutil.copytree(base, out)
    else:
        from hhtune.export import export_adapter

        export_adapter(adapter, "merged", out, base=base)
    print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args()
    import torch

    from hhtune.export import export_adapter
    from hhtune.lora import LoraSettings, add_lora
    from hhtune.model import HappyHorseTransformer, ModelConfig, save_checkpoint

    cfg = ModelConfig(**{**ModelConfig.preset("15b").model_dump(), "num_layers": args.layers, "mm_layers": [], "gelu7_layers": []})
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = HappyHorseTransformer(cfg)
        base = save_checkpoint(model, tmp / "base", max_shard_size="1GB")
        peft_model = add_lora(model, LoraSettings(rank=32, init="gaussian"))
        adapter = export_adapter(peft_model, "comfyui", tmp / "adapter.safetensors")
        del model, peft_model
        shard = max(f.stat().st_size for f in base.glob("model*.safetensors"))
        res = {}
        for kind in ("copy", "merge"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(base), str(adapter), str(tmp / kind)],
                                 capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
            res[kind] = (float(out[0]), int(out[1]))
        total = sum(f.stat().st_size for f in base.glob("model*.safetensors"))
        print(f"base: {args.layers} layers at 15B widths, {total / 2**30:.2f} GiB in {len(list(base.glob('model*.safetensors')))} shards, largest {shard / 2**30:.2f} GiB")
        print(f"merge time / plain copy time: {res['merge'][0] / res['copy'][0]:.2f}")
        print(f"peak host memory of the merge / largest shard: {res['merge'][1] / shard:.2f}")


if __name__ == "__main__":
    main()
