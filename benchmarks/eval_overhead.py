"""Metric overhead of `python -m hhtune.evaluate`, as a ratio to the sampling it judges (CPU).

Evaluating C checkpoints samples (C + 1) variants (the base as control) x P prompts x S seeds, plus
(C + 1) x D drift prompts x S seeds (D = 7 by default: one neutral prompt per language). This benchmark
times, on the CPU:

* sampling: the 8-step distilled sampler with a `--preset` model (DiT only: the VAE decoders need the real
  weights), for one clip, times the number of clips;
* metrics: every metric of hhtune.evaluation.metrics (voice, DNSMOS, lip-sync, face, look) on each of the
  C + 1 variants' P x S clips against the same R training clips, plus drift of C variants on D x S pairs.

Each part is timed in wall seconds and in CPU seconds of this process: on a machine shared with other jobs
wall time measures the other jobs too. The clips have the sampled size and length: a face (scikit-image's
astronaut when installed, else the worst case of frames without a face) and speech (espeak-ng when installed,
else modulated noise). The issue's budget is metrics <= 20 % of sampling. The ratio depends on the model:
the tiny preset takes about 1.4 CPU seconds a 2 s clip on one core, the 15B model about 2 s on one H100
(1.6 s DiT + 0.4 s decode, the official report), so the absolute metric seconds per clip are printed too.

Then the path `python -m hhtune.evaluate` takes (`--metric-workers`, default 1): each brand clip is handed to
background worker processes as soon as it is sampled, and each variant is scored once its clips are done. It is
timed in wall seconds against the same sampling alone, both with torch limited to `--sampling-threads` (the cores
the metric workers leave), so the printed wall ratio is what overlapping costs on this machine.

    python benchmarks/eval_overhead.py [--checkpoints 5 --prompts 4 --drift-prompts 7 --seeds 2 --references 4
                                        --preset tiny --metric-workers 1 --sampling-threads 1]
"""

from __future__ import annotations

import argparse
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
from hhtune.evaluation.scoring import METRICS, score_samples
from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.sampling import latent_shapes, model_velocity_fn, sample_distilled
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


def _overlapped(sample, brand: list[list[AVClip]], n_drift: int, refs: list[AVClip], workers: int) -> np.ndarray:
    """``[wall s of sampling alone, wall s of sampling with background scoring]`` of every variant's clips.

    ``brand[v]`` stands for variant ``v``'s decoded brand clips (one per sample); drift clips are sampled only
    (their metric is a cheap pixel and log-mel distance). Sampling alone is timed before and after, averaged.
    """

    def sample_all(scorer: BackgroundScorer | None) -> None:
        for clips in brand:
            for clip in clips:
                sample()
                if scorer is not None:
                    scorer.submit(clip, METRICS)
            for _ in range(n_drift):
                sample()
        if scorer is not None:
            scorer.finish()
            for clips in brand:
                score_samples(clips, refs)

    def with_scorer() -> None:
        with BackgroundScorer(workers) as scorer:  # the workers start (and load their models) inside the timing
            for ref in refs:
                scorer.submit(ref, ("voice_similarity", "face_similarity"))
            sample_all(scorer)

    alone = _timed(sample_all, None)[0]
    both = _timed(with_scorer)[0]
    alone = (alone + _timed(sample_all, None)[0]) / 2
    return np.array([alone, both])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=int, default=5)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--drift-prompts", type=int, default=len(LANGUAGES), help="python -m hhtune.evaluate samples one "
                   "per language (--drift-languages all)")
    p.add_argument("--seeds", type=int, default=2)
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
    sample = lambda: sample_distilled(fn, vshape, ashape, generator=torch.Generator().manual_seed(0))
    sample()  # warm-up
    n, n_drift = args.prompts * args.seeds, args.drift_prompts * args.seeds
    variants = args.checkpoints + 1

    frames = ashape[1]
    refs = _clips(args.references, frames, width, height, 0)
    score_samples(refs[:1], refs[:1])  # load the models once, as a long evaluation does
    parts = {name: np.zeros(2) for name in METRICS}
    drift_s, base, sample_s = np.zeros(2), None, []
    for v in range(variants):  # each variant's own clips against the same references
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
    per_clip = np.mean(sample_s, axis=0)
    sampling = per_clip * variants * (n + n_drift)  # brand prompts and drift prompts
    metrics = sum(parts.values()) + drift_s
    print(f"{args.checkpoints} checkpoints + base x ({args.prompts} prompts + {args.drift_prompts} drift prompts) x "
          f"{args.seeds} seeds, {args.references} references; {args.seconds:g} s clips ({frames} frames "
          f"{width}x{height}); preset {args.preset}, CPU")  # fmt: skip
    w = lambda x: f"{x[0]:.2f} s wall, {x[1]:.2f} s CPU"  # one format for every line
    print(f"sampling: {w(per_clip)} a clip (DiT, 8 steps; mean of {len(sample_s)} timed between the metrics); "
          f"{variants * (n + n_drift)} clips: {w(sampling)}")
    for k, v in parts.items():
        print(f"  {k:17} {w(v / (variants * n))} a clip")
    print(f"  {'drift':17} {w(drift_s / max(1, args.checkpoints * n_drift))} a pair")
    print(f"metrics: {w(metrics)} in all, {w(metrics / (variants * n))} a sampled clip")
    ratio = metrics / sampling
    print(f"serial overhead ratio (metrics / sampling): {ratio[0]:.2f} wall, {ratio[1]:.2f} CPU time (on a machine "
          "shared with other jobs the CPU-time ratio is the one to trust)")
    brand = [_clips(n, frames, width, height, 200 + v) for v in range(variants)]
    fresh_refs = _clips(args.references, frames, width, height, 300)  # nothing cached for them yet
    alone, both = _overlapped(sample, brand, n_drift, fresh_refs, args.metric_workers)
    print(f"overlapped ({args.metric_workers} metric worker processes, torch {args.sampling_threads} threads): "
          f"sampling alone {alone:.1f} s wall, sampling + background metrics {both:.1f} s wall")
    print(f"overhead ratio, wall time: overlapped {(both - alone) / alone:.2f} | serial {ratio[0]:.2f} wall, "
          f"{ratio[1]:.2f} CPU time")

if __name__ == "__main__":
    main()
