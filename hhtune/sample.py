"""Generate a clip with HappyHorse (+ adapters) and write an mp4 with sound.

    python -m hhtune.sample --model CHECKPOINT_OR_PRESET --encoders ENCODERS_DIR \
        [--adapter PATH[:STRENGTH|:video=F,audio=F] ...] [--step N] --prompt "..." [--image ref.png] \
        [--audio speech.wav] [--seconds 5] [--aspect 16:9] [--sampler distilled|base] [--seed 0] \
        [--decoder wan|turbo [--turbo-vae DIR]] --out DIR

An adapter is any file or folder hhtune.export reads: a training run folder (its final adapter, or with
--step N its checkpoint at step N), a checkpoint folder RUN/checkpoints/step-N, a PEFT folder, or a file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from hhtune.cli import run_command

from .contract import BUCKETS, COMPUTE_DTYPES


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes as in :mod:`hhtune.cli`."""
    return run_command(_main, argv)


class SampleError(ValueError):
    """A sampling request that cannot be served; the message says what to pass instead."""


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hhtune.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", required=True,
                        help="official-layout checkpoint folder (a preset name only with --random-weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="with a preset name for --model: sample an untrained random model (tests, smoke runs)")
    parser.add_argument("--encoders", required=True, type=Path,
                        help="folder with video_vae/, audio_vae/, text_encoder/")
    parser.add_argument("--adapter", action="append", default=[],
                        help="adapter file or folder, optionally :STRENGTH, or per modality :video=1.0,audio=0.5")
    parser.add_argument("--ignore-base-mismatch", action="store_true",
                        help="apply an adapter recorded for another base with a warning (e.g. an FP8 copy of its base)")
    parser.add_argument("--step", type=int, help="with --adapter RUN_DIR: the run's checkpoint at this step")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image", type=Path, help="reference first frame (image-to-video)")
    parser.add_argument("--audio", type=Path, help="given audio (audio-to-video): kept fixed")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--aspect", default="16:9", choices=list(BUCKETS))
    parser.add_argument("--base-resolution", type=int, default=256)
    parser.add_argument("--sampler", default="distilled", choices=["distilled", "base"])
    parser.add_argument("--video-guidance", type=float, default=5.0)
    parser.add_argument("--audio-guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--compute-dtype", default="auto", choices=list(COMPUTE_DTYPES),
                        help="block linears/attention: bf16 (official numerics), fp32, "
                             "auto (bf16 on CUDA, fp32 on CPU)")
    _add_decoder_arguments(parser)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    adapter_specs = _adapter_specs(args.adapter, args.step)  # checked before anything loads

    import torch  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    from hhtune.encoders import EncoderPaths  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.model import HappyHorseTransformer, ModelConfig, load_checkpoint  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.sampling import generate, write_mp4, write_previews  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.sampling.generate import NEGATIVE_PROMPT, encode_prompts  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    preset = args.model in ModelConfig.preset_names() and not Path(args.model).exists()
    if preset and not args.random_weights:
        raise SampleError(
            f"--model {args.model} is a preset name, not a checkpoint: it would sample random weights. Pass the "
            "checkpoint folder (e.g. the distill/ folder of the official weights), or add --random-weights if an "
            "untrained model is what you want (tests, smoke runs)"
        )
    encoders = EncoderPaths(video_vae=args.encoders / "video_vae", audio_vae=args.encoders / "audio_vae",
                            text_encoder=args.encoders / "text_encoder")  # fmt: skip
    decoder = _video_decoder(args)  # a bad Turbo VAE is refused before anything heavy loads
    # The text encoder (T5Gemma, 18 GB in bf16) is loaded, used and freed before the DiT exists.
    prompts = [args.prompt, NEGATIVE_PROMPT] if args.sampler == "base" else [args.prompt]
    features = encode_prompts(prompts, encoders.text_encoder, args.device)
    if preset:
        torch.manual_seed(0)
        model = HappyHorseTransformer(ModelConfig.preset(args.model)).to(args.device)
    else:
        model = load_checkpoint(args.model, device=args.device)
    model.set_compute_dtype(args.compute_dtype)
    from hhtune.adapters import load as load_adapter  # noqa: PLC0415 -- entry point: peft loads after argparse so --help is instant

    for path, strength, modalities in adapter_specs:
        model = load_adapter(path, model, strength=strength, modalities=modalities,
                             check_base="warn" if args.ignore_base_mismatch else True)  # fmt: skip
    model.eval()
    image = np.asarray(Image.open(args.image).convert("RGB")) if args.image else None
    steps = 8 if args.sampler == "distilled" else 32
    with Progress() as bar:
        task = bar.add_task(f"{args.sampler} sampling", total=steps)
        g = generate(model, args.prompt, encoders, seconds=args.seconds, aspect=args.aspect,
                     base_resolution=args.base_resolution, sampler=args.sampler, seed=args.seed, reference_image=image,
                     audio_path=str(args.audio) if args.audio else None, video_guidance=args.video_guidance,
                     audio_guidance=args.audio_guidance, device=args.device, progress=lambda _i: bar.advance(task),
                     text_features=features[0],
                     negative_features=features[1] if len(features) > 1 else None, video_decoder=decoder)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    mp4 = write_mp4(g.frames, g.audio, args.out / "sample.mp4")
    write_previews(g, args.out / "sample")
    print(f"wrote {mp4}")
    return 0


def _add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decoder", default="wan", choices=["wan", "turbo"],
                        help="video decoder: the full Wan2.2 VAE, or the official Turbo VAE (faster, for 540p/1080p)")
    parser.add_argument("--turbo-vae", type=Path,
                        help="with --decoder turbo: the turbo_vae/ folder (JSON config + student checkpoint); "
                             "default ENCODERS/turbo_vae")


def _video_decoder(args: argparse.Namespace):
    """The ``--decoder turbo`` Turbo VAE, loaded (or refused) now; ``None`` lets generate use the Wan2.2 VAE."""
    if args.decoder != "turbo":
        if args.turbo_vae:
            raise SampleError("--turbo-vae is the Turbo VAE decoder's folder: pass it with --decoder turbo")
        return None
    from hhtune.encoders import load_decoder  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    return load_decoder("turbo", args.turbo_vae or args.encoders / "turbo_vae", args.device)


def _adapter_specs(specs: list[str], step: int | None) -> list:
    """The ``--adapter`` specs parsed, run folders taken at ``--step``; a missing adapter or step is refused here."""
    from hhtune.adapters import parse_spec  # noqa: PLC0415 -- entry point: peft loads after argparse so --help is instant
    from hhtune.training.state import step_checkpoint  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    parsed = [parse_spec(s) for s in specs]
    if step is not None and not parsed:
        raise SampleError(f"--step {step} picks a checkpoint of a training run: "
                          "pass the run folder as --adapter RUN_DIR")
    if step is not None:
        parsed = [a._replace(path=str(step_checkpoint(Path(a.path), step))) for a in parsed]
    for a in parsed:
        if not Path(a.path).exists():
            raise FileNotFoundError(f"adapter not found: {a.path}")
    return parsed


def _cuda() -> bool:
    import torch  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
