"""Metric overhead of `python -m hhtune.evaluate`, as a ratio to the sampling it judges (CPU).

Evaluating C checkpoints samples what `python -m hhtune.evaluate` samples:

* (C + 1) variants (the base as control) x P prompts x S seeds, plus (C + 1) x D drift prompts x S seeds
  (D = 7 by default: one neutral prompt per language), with the 8-step distilled sampler;
* the transfer of the chosen checkpoint: base model with and without it, 32 UniPC steps with CFG (two forwards a
  step), and the distilled model without it and at each of K strengths, P x S clips each.

This benchmark times, on the CPU, with a `--preset` model (DiT only: the VAE decoders need the real weights):

* sampling: one clip of each sampler, times the number of clips;
* metrics: every metric of hhtune.evaluation.metrics (voice, DNSMOS, lip-sync, face, look) on each variant's
  P x S clips against the same R training clips, drift of C variants on D x S pairs, and the strength search's
  voice, lip-sync and speech quality on the K x P x S transfer clips.

Each part is timed in wall seconds and in CPU seconds of this process: on a machine shared with other jobs
wall time measures the other jobs too. The clips have the sampled size and length: a face (scikit-image's
astronaut when installed, else the worst case of frames without a face) and speech (espeak-ng when installed,
else modulated noise). The issue's budget is metrics <= 20 % of sampling. The ratio depends on the model:
the tiny preset takes about 1.3 CPU seconds a 2 s distilled clip on one core, the 15B model about 2 s on one H100
(1.6 s DiT + 0.4 s decode, the official report), so the absolute metric seconds per clip are printed too.

Then the path `python -m hhtune.evaluate` takes on a GPU (`--metric-workers`, 1 there by default): each clip scored is
handed to background worker processes as soon as it is sampled, and each variant is scored once its clips are
done. It is timed in wall seconds against the same sampling alone, both with torch limited to `--sampling-threads`
(the cores the metric workers leave), and against sampling alone on every core (the CPU case: there the workers
take cores the sampler could have used; on a GPU machine the sampler leaves the cores idle).

    python benchmarks/eval_overhead.py [--checkpoints 5 --prompts 4 --drift-prompts 7 --seeds 2 --strengths 5
                                        --references 4 --preset tiny --metric-workers 1 --sampling-threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import torch

from hhtune.contract import FPS, SPEECH_SAMPLE_RATE
from hhtune.evaluation.background import BackgroundScorer
from hhtune.evaluation.clips import AVClip
from hhtune.evaluation.metrics import drift
from hhtune.evaluation.scoring import METRICS, QUALITY_METRICS, score_samples
from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.sampling import latent_shapes, model_velocity_fn, sample_base, sample_distilled
from hhtune.speech.languages import LANGUAGES

RATE = SPEECH_SAMPLE_RATE


def _face(width: int, height: int) -> np.ndarray:
    """A frame with a face filling its height (the astronaut), or noise without scikit-image."""
    try:
        from PIL import Image  # noqa: PLC0415 -- with the optional scikit-image below: noise without it
        from skimage.data import astronaut  # noqa: PLC0415 -- optional: noise without scikit-image
    except ImportError:
        return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    face = np.asarray(Image.fromarray(astronaut()).resize((height, height)))
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, (width - height) // 2 : (width + height) // 2] = face
    return frame


def _speech(samples: int, seed: int) -> np.ndarray:
    """Speech from espeak-ng (looped to ``samples``), or loudness-modulated noise without it."""
    rng = np.random.default_rng(seed)
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "s.wav"
            words = " ".join(rng.choice(["hello", "brand", "new", "summer", "offer", "today", "only"], 12))
            subprocess.run(["espeak-ng", "-v", "en+m3", "-w", str(wav), words], check=True, capture_output=True)
            audio, _ = librosa.load(wav, sr=RATE)
        return np.resize(audio, samples).astype(np.float32)
    hop = RATE // FPS  # one loudness value per video frame
    env = np.repeat(rng.random(samples // hop + 1), hop)[:samples]
    return (0.3 * env * rng.standard_normal(samples)).astype(np.float32)


def _clips(n: int, frames: int, width: int, height: int, seed: int) -> list[AVClip]:
    rng = np.random.default_rng(seed)
    base = _face(width, height)
    out = []
    for i in range(n):
        video = np.stack([np.roll(base, int(rng.integers(-3, 4)), axis=0) for _ in range(frames)])
        out.append(AVClip(video, _speech(frames * RATE // FPS, seed * 1000 + i), RATE, f"clip{i}"))
    return out


def _timed(fn, *args, **kwargs) -> np.ndarray:
    """``[wall seconds, CPU seconds of this process (every thread)]`` of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return np.array([time.perf_counter() - t, time.process_time() - c])


def _plan(brand: list[list[AVClip]], n_drift: int, transfer: list[list[AVClip]], n: int) -> list[tuple]:
    """Every clip of an evaluation in the order it samples, as ``(sampler, clip or None, metrics)``.

    ``brand[v]``: variant ``v``'s decoded brand clips (one per sample; drift clips only sample: their metric is a
    cheap pixel and log-mel distance); ``transfer[k]``: strength ``k``'s clips (scored for the strength choice).
    """
    jobs = []
    for clips in brand:
        jobs += [("distilled", clip, METRICS) for clip in clips] + [("distilled", None, ())] * n_drift
    jobs += [("base", None, ())] * (2 * n) + [("distilled", None, ())] * n  # references and the no-adapter gap
    for clips in transfer:
        jobs += [("distilled", clip, QUALITY_METRICS) for clip in clips]
    return jobs


def _overlapped(samplers: dict, jobs: list[tuple], scored: list[list[AVClip]], refs: list[AVClip], workers: int,
                sampling_threads: int) -> np.ndarray:  # fmt: skip
    """``[wall s of sampling alone, wall s of sampling with background scoring, wall s of sampling alone on every
    core]`` of the evaluation's ``jobs`` (see :func:`_plan`); ``scored``: the clips scored, by variant."""

    def sample_all(scorer: BackgroundScorer | None) -> None:
        for sampler, clip, names in jobs:
            samplers[sampler]()
            if scorer is not None and clip is not None:
                scorer.submit(clip, names)
        if scorer is not None:
            scorer.finish()
            for clips in scored:
                score_samples(clips, refs)

    def with_scorer() -> None:
        with BackgroundScorer(workers) as scorer:  # the workers start (and load their models) inside the timing
            for ref in refs:
                scorer.submit(ref, ("voice_similarity", "face_similarity"))
            sample_all(scorer)

    alone = _timed(sample_all, None)[0]
    both = _timed(with_scorer)[0]
    torch.set_num_threads(os.cpu_count() or 1)
    every_core = _timed(sample_all, None)[0]
    torch.set_num_threads(sampling_threads)
    return np.array([alone, both, every_core])


def _serial(sample, refs: list[AVClip], args, size: tuple[int, int, int]):
    """``(seconds of each metric, of drift, of the transfer's quality metrics, one sample between each variant)``,
    each ``[wall, CPU]``, scoring every variant's clips in this process after one another."""
    frames, width, height = size
    n, n_drift = args.prompts * args.seeds, args.drift_prompts * args.seeds
    parts = {name: np.zeros(2) for name in METRICS}
    drift_s, transfer_s, base, sample_s = np.zeros(2), np.zeros(2), None, []
    for v in range(args.checkpoints + 1):  # each variant's own clips against the same references
        # one sample timed between each variant's metrics: a load that changes during the run (other jobs on
        # the machine) weighs on both sides of the ratio alike
        sample_s.append(_timed(sample))
        clips = _clips(n, frames, width, height, v + 1)
        for name in METRICS:  # what runner.evaluate_run scores, one metric at a time to show each one's share
            parts[name] += _timed(score_samples, clips, refs, names=(name,))
        drift_clips = _clips(n_drift, frames, width, height, 100 + v)
        if base is None:
            base = drift_clips
        else:
            drift_s += _timed(drift, drift_clips, base)
    for i in range(args.strengths):  # the strength search scores only what decides it
        transfer_s += _timed(score_samples, _clips(n, frames, width, height, 400 + i), refs, names=QUALITY_METRICS)
    return parts, drift_s, transfer_s, sample_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=int, default=5)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--drift-prompts", type=int, default=len(LANGUAGES), help="python -m hhtune.evaluate samples one "
                   "per language (--drift-languages all)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--strengths", type=int, default=5, help="transfer strengths (python -m hhtune.evaluate's "
                   "default --strengths has 5)")
    p.add_argument("--references", type=int, default=4)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--metric-workers", type=int, default=1, help="background metric processes (overlapped path)")
    p.add_argument("--sampling-threads", type=int, default=1, help="torch threads while sampling (the cores the "
                   "metric workers leave)")
    args = p.parse_args()
    torch.set_num_threads(args.sampling_threads)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(args.preset)
    model = HappyHorseTransformer(cfg).eval()
    vshape, ashape, (width, height) = latent_shapes(args.seconds, "16:9", 256)
    fn = model_velocity_fn(model, torch.randn(1, 64, cfg.text_in_channels), 64)
    uncond = model_velocity_fn(model, torch.randn(1, 64, cfg.text_in_channels), 64)
    sample = lambda: sample_distilled(fn, vshape, ashape, generator=torch.Generator().manual_seed(0))
    sample_b = lambda: sample_base(fn, uncond, vshape, ashape, generator=torch.Generator().manual_seed(0))
    sample(), sample_b()  # warm-up
    n, n_drift, k = args.prompts * args.seeds, args.drift_prompts * args.seeds, args.strengths
    variants = args.checkpoints + 1

    frames = ashape[1]
    refs = _clips(args.references, frames, width, height, 0)
    score_samples(refs[:1], refs[:1])  # load the models once, as a long evaluation does
    parts, drift_s, transfer_s, sample_s = _serial(sample, refs, args, (frames, width, height))
    per_clip, per_base = np.mean(sample_s, axis=0), _timed(sample_b)
    brand_sampling = per_clip * variants * (n + n_drift)  # brand prompts and drift prompts
    sampling = brand_sampling + per_clip * (1 + k) * n + per_base * 2 * n  # and the transfer's clips
    brand_metrics = sum(parts.values()) + drift_s
    metrics = brand_metrics + transfer_s
    print(f"{args.checkpoints} checkpoints + base x ({args.prompts} prompts + {args.drift_prompts} drift prompts) x "
          f"{args.seeds} seeds, {args.references} references, transfer at {k} strengths; {args.seconds:g} s clips "
          f"({frames} frames {width}x{height}); preset {args.preset}, CPU")  # fmt: skip
    w = lambda x: f"{x[0]:.2f} s wall, {x[1]:.2f} s CPU"  # one format for every line
    print(f"sampling a clip: distilled (8 steps) {w(per_clip)} (mean of {len(sample_s)} timed between the metrics); "
          f"base (32 steps, CFG) {w(per_base)}")
    print(f"sampling: {variants * (n + n_drift)} checkpoint and drift clips {w(brand_sampling)}; with the transfer's "
          f"{(1 + k) * n} distilled and {2 * n} base clips {w(sampling)}")
    for name, v in parts.items():
        print(f"  {name:17} {w(v / (variants * n))} a clip")
    print(f"  {'drift':17} {w(drift_s / max(1, args.checkpoints * n_drift))} a pair")
    print(f"  {'transfer quality':17} {w(transfer_s / (k * n))} a clip ({', '.join(QUALITY_METRICS)})")
    print(f"metrics: {w(metrics)} in all, {w(brand_metrics / (variants * n))} a checkpoint clip")
    ratio, brand_ratio = metrics / sampling, brand_metrics / brand_sampling
    print(f"serial overhead ratio (metrics / sampling): whole evaluation {ratio[0]:.2f} wall, {ratio[1]:.2f} CPU time; "
          f"checkpoints and drift alone {brand_ratio[0]:.2f} wall, {brand_ratio[1]:.2f} CPU time (on a machine shared "
          "with other jobs the CPU-time ratios are the ones to trust)")  # fmt: skip
    brand = [_clips(n, frames, width, height, 200 + v) for v in range(variants)]
    transfer = [_clips(n, frames, width, height, 500 + i) for i in range(k)]
    fresh_refs = _clips(args.references, frames, width, height, 300)  # nothing cached for them yet
    jobs = _plan(brand, n_drift, transfer, n)
    alone, both, every_core = _overlapped({"distilled": sample, "base": sample_b}, jobs, brand + transfer,
                                          fresh_refs, args.metric_workers, args.sampling_threads)  # fmt: skip
    print(f"overlapped, whole evaluation ({args.metric_workers} metric worker processes, torch "
          f"{args.sampling_threads} threads): sampling alone {alone:.1f} s wall, sampling + background metrics "
          f"{both:.1f} s wall; sampling alone on all {os.cpu_count()} cores {every_core:.1f} s wall")
    print(f"overhead ratio, wall time: overlapped {(both - alone) / alone:.2f} against sampling on the cores the "
          f"workers leave, {(both - every_core) / every_core:.2f} against sampling on every core | serial "
          f"{ratio[0]:.2f} wall, {ratio[1]:.2f} CPU time; serial after sampling on every core (the metrics' wall "
          f"time above over that sampling) {metrics[0] / every_core:.2f}")


if __name__ == "__main__":
    main()
