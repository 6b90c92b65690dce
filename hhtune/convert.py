"""One-time conversion of a checkpoint pickle that hhtune will not unpickle into safetensors.

    python -m hhtune.convert turbo-vae CHECKPOINT.ckpt [--out FILE.safetensors]

hhtune reads torch pickles only with ``torch.load(..., weights_only=True)``, which refuses a pickle
holding more than tensors and plain containers (the official Turbo VAE student checkpoint is a
training pickle). Unpickling such a file can run any code it carries, so it happens here only,
when asked, with a warning: run this for a file from a source you trust. The result holds the
decoder's tensors alone and is what ``--decoder turbo`` then loads (it is preferred to the pickle
beside it).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from hhtune.cli import run_command

_WARNING = ("warning: unpickling {file}: a pickle can run any code it carries. Convert only a file from a source "
            "you trust (the official GAIR/daVinci-MagiHuman turbo_vae/ checkpoint is one).")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli`."""
    return run_command(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hhtune.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    kinds = parser.add_subparsers(dest="kind", required=True)
    turbo = kinds.add_parser("turbo-vae", help="the Turbo VAE student checkpoint -> safetensors")
    turbo.add_argument("checkpoint", type=Path, help="the .ckpt/.pt/.pth pickle")
    turbo.add_argument("--out", type=Path, help="where to write (default: the checkpoint's path with .safetensors)")
    args = parser.parse_args(argv)
    out = convert_turbo_vae(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0


def convert_turbo_vae(checkpoint: Path, out: Path | None = None) -> Path:
    """Write the decoder tensors of the Turbo VAE ``checkpoint`` to ``out`` (default ``checkpoint.safetensors``).

    The pickle is read with ``weights_only=True`` first; only when that refuses it is it unpickled
    in full, after a warning on stderr.
    """
    import torch  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from safetensors.torch import save_file  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    from hhtune.encoders.turbo_load import PICKLE_SUFFIXES, turbo_state_dict  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if checkpoint.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{checkpoint} is not a torch pickle ({', '.join(PICKLE_SUFFIXES)}); nothing to convert")
    out = out or checkpoint.with_suffix(".safetensors")
    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        print(_WARNING.format(file=checkpoint), file=sys.stderr)
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = turbo_state_dict(loaded, checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(out),  # clone: no shared storage
              metadata={"format": "hhtune.turbo_vae", "source": checkpoint.name})  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
