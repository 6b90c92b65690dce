"""Generate a clip with HappyHorse (+ adapters) and write an mp4 with sound.

    python -m hhtune.sample --model CHECKPOINT_OR_PRESET --encoders ENCODERS_DIR \
        [--adapter PATH[:STRENGTH|:video=F,audio=F] ...] [--step N] --prompt "..." [--image ref.png] \
        [--audio speech.wav] [--seconds 5] [--aspect 16:9] [--sampler distilled|base] [--seed 0] --out DIR \
        [--decoder wan|turbo [--turbo-vae DIR]] \
        [--sr 540p|1080p --sr-model SR_CHECKPOINT [--sr-adapter PATH[:STRENGTH]] [--sr-cfg]]

With --sr the clip is rendered in two stages, as the official pipeline does: --model at --base-resolution, then
the super-resolution model (the official 540p_sr/ or 1080p_sr/ folder) refines it in 5 steps at the delivered size
(540p: twice the base size; 1080p: 4.25 times), and the decoders run at that size. --adapter applies to the first
stage, --sr-adapter to the SR stage. Only one DiT is in memory at a time: the first is freed before the SR one loads.

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

from .contract import BUCKETS, COMPUTE_DTYPES, SR_RESOLUTIONS


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
    parser.add_argument("--sr", choices=list(SR_RESOLUTIONS), help="render a second, super-resolution stage")
    parser.add_argument("--sr-model", help="with --sr: the SR checkpoint folder (540p_sr/ or 1080p_sr/; a preset "
                                           "name only with --random-weights)")
    parser.add_argument("--sr-adapter", action="append", default=[],
                        help="with --sr: an adapter for the SR stage, as --adapter (repeatable)")
    parser.add_argument("--sr-cfg", action="store_true",
                        help="with --sr: guide the SR stage with the negative prompt (two forwards per step, the "
                             "official sr_cfg_number 2); the official SR examples run without")
    args = parser.parse_args(argv)
    if (args.sr is None) != (args.sr_model is None) or ((args.sr_adapter or args.sr_cfg) and args.sr is None):
        raise SampleError("--sr and --sr-model go together (the SR resolution and its checkpoint folder); "
                          "--sr-adapter and --sr-cfg need both")
    adapter_specs = _adapter_specs(args.adapter, args.step)  # checked before anything loads
    sr_adapter_specs = _adapter_specs(args.sr_adapter, None)

    from hhtune.encoders import EncoderPaths  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.sampling.generate import NEGATIVE_PROMPT, encode_prompts  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    encoders = EncoderPaths(video_vae=args.encoders / "video_vae", audio_vae=args.encoders / "audio_vae",
                            text_encoder=args.encoders / "text_encoder")  # fmt: skip
    decoder = _video_decoder(args)  # a bad Turbo VAE is refused before anything heavy loads
    _check_stages(args)
    # The text encoder (T5Gemma, 18 GB in bf16) is loaded, used and freed before the DiT exists.
    negative = args.sampler == "base" or args.sr_cfg
    features = encode_prompts([args.prompt, NEGATIVE_PROMPT] if negative else [args.prompt], encoders.text_encoder,
                              args.device)  # fmt: skip
    image = None
    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    g = _render(args, encoders, features, image, adapter_specs, sr_adapter_specs, decoder)
    args.out.mkdir(parents=True, exist_ok=True)
    from hhtune.sampling import write_mp4, write_previews  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

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


def _render(args, encoders, features: list, image, adapter_specs: list, sr_adapter_specs: list, decoder):
    """Both stages with progress bars; the first DiT is freed before the SR one loads."""
    import torch  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    from hhtune.sampling.generate import decode_latents, generate  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant
    from hhtune.sampling.super_resolution import SrStage, load_stage_model, super_resolve  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    text, negative = features[0], features[1] if len(features) > 1 else None
    generator = torch.Generator().manual_seed(args.seed)
    check = "warn" if args.ignore_base_mismatch else True
    model = load_stage_model(args.model, args.device, adapters=adapter_specs, check_base=check,
                             compute_dtype=args.compute_dtype)
    with Progress() as bar:
        task = bar.add_task(f"{args.sampler} sampling", total=8 if args.sampler == "distilled" else 32)
        out = generate(model, args.prompt, encoders, seconds=args.seconds, aspect=args.aspect,
                       base_resolution=args.base_resolution, sampler=args.sampler, seed=args.seed,
                       reference_image=image, audio_path=str(args.audio) if args.audio else None,
                       video_guidance=args.video_guidance, audio_guidance=args.audio_guidance, device=args.device,
                       progress=lambda _i: bar.advance(task), text_features=text, negative_features=negative,
                       decode=args.sr is None, generator=generator, video_decoder=decoder)  # fmt: skip
        if args.sr is None:
            return out
        del model
        _free(args.device)
        sr_model = load_stage_model(args.sr_model, args.device, sr=args.sr, adapters=sr_adapter_specs,
                                    check_base=check, compute_dtype=args.compute_dtype)
        stage = SrStage(args.sr, sr_model, guidance=args.sr_cfg)
        task = bar.add_task(f"{args.sr} super-resolution", total=stage.steps)
        video, audio = super_resolve(stage, *out, encoders=encoders, aspect=args.aspect,
                                     base_resolution=args.base_resolution, generator=generator, text_features=text,
                                     negative_features=negative, reference_image=image, device=args.device,
                                     progress=lambda _i: bar.advance(task))  # fmt: skip
    del stage
    _free(args.device)
    return decode_latents(video, audio, encoders, device=args.device, video_decoder=decoder)


def _check_stages(args: argparse.Namespace) -> None:
    """Refuse a preset name where a checkpoint is meant (unless random weights are asked for), then a checkpoint of
    the other stage: an SR one as ``--model``, a first-stage one (or the other resolution) as ``--sr-model``."""
    from hhtune.model import ModelConfig, check_variant  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    stages = [(args.model, "--model", "distill")]
    if args.sr:
        stages.append((args.sr_model, "--sr-model", f"sr_{args.sr}"))
    checkpoints = []
    for spec, flag, variant in stages:
        if spec not in ModelConfig.preset_names() or Path(spec).exists():
            checkpoints.append((spec, variant))
        elif not args.random_weights:
            raise SampleError(
                f"{flag} {spec} is a preset name, not a checkpoint: it would sample random weights. Pass the "
                "checkpoint folder (e.g. the distill/ folder of the official weights), or add --random-weights if an "
                "untrained model is what you want (tests, smoke runs)"
            )
    for spec, variant in checkpoints:  # "distill": any first-stage checkpoint
        check_variant(spec, variant)


def _free(device: str) -> None:
    """Return the memory of dropped models (the device's cache too)."""
    import gc  # noqa: PLC0415 -- only the two-stage render frees between stages

    import torch  # noqa: PLC0415 -- entry point: torch loads after argparse so --help is instant

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


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
