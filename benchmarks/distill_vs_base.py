"""Train the adapter on the distilled model or on the base? What each does to 8-step quality (tiny proxy, CPU).

Training on the step-distilled model with a plain flow-matching loss is known to undo step distillation
(DMD2 #76; diffusion-pipe's notes on "undistilling"); Lightricks' advice for LTX-2 is to train on the base
and apply the adapter to either. This measures both on tiny models, in four parts:

1. the base: :func:`~hhtune.training.synthetic.denoising_base` (the learning check's model, a random model
   that passes its input through as a pretrained flow model does);
2. the teacher: the base with the base sampler (32 UniPC steps, CFG against an empty prompt) on every prompt
   and seed; a tiny "distilled" model is the base fully fine-tuned, by flow matching onto the teacher's
   samples at the 8 sigmas of the distilled sampler only, so that 8 steps land where the teacher's 32 do;
3. the same adapter (the recipe's LoRA, ``hhtune.training.train``) trained on one synthetic clip from the
   distilled model (``model.variant: distill``) and from the base (``model.variant: base``);
4. each adapter on the distilled model, 8 steps, strength 1, at fixed seeds:
   * drift prompts (random text unrelated to the clip): the distance to the teacher's samples (8-step
     quality: how far the distilled model with the adapter lands from what it was distilled to make), and
     to the distilled model's own samples without adapter (drift);
   * the clip's caption: the distance to the training clip (what the adapter learned).

Distances are relative L2 of video latents (|a - b| / |b|), medians over prompts and seeds. The models
are random and tiny and the clip is noise: this says how the two recipes behave on a proxy, not how a
15B adapter will look; the brand-level answer is ``python -m hhtune.evaluate`` on a real run.

    python benchmarks/distill_vs_base.py [--steps 300] [--distill-steps 300] [--prompts 4] [--seeds 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from learning import CONFIG, proxy_recipe

from hhtune import adapters
from hhtune.contract import AUDIO_LATENTS, TEXT_EMBEDS, VIDEO_LATENTS
from hhtune.model import load_checkpoint, save_checkpoint
from hhtune.sampling.generate import model_velocity_fn
from hhtune.sampling.samplers import official_sigmas, sample_base, sample_distilled
from hhtune.training import TrainingDataset, train
from hhtune.training.synthetic import denoising_base, write_synthetic_dataset

TEXT_LEN = 6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _sample(model, text: torch.Tensor, shapes, seed: int) -> torch.Tensor:
    """Video latents of one 8-step distilled sample."""
    fn = model_velocity_fn(model, text, text.shape[1])
    return sample_distilled(fn, *shapes, generator=torch.Generator().manual_seed(seed))[0]


def _teacher(model, text: torch.Tensor, shapes, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio latents of the base sampler (32 UniPC steps, CFG against an empty prompt)."""
    fn = model_velocity_fn(model, text, text.shape[1])
    empty = model_velocity_fn(model, torch.zeros_like(text), text.shape[1])
    return sample_base(fn, empty, *shapes, generator=torch.Generator().manual_seed(seed))


def _distill(base, texts: list[torch.Tensor], targets: dict, steps: int, lr: float = 1e-4):
    """The base fully fine-tuned so that its 8-step sampler reproduces the teacher's samples (see the docstring)."""
    student = copy.deepcopy(base).train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sigmas = official_sigmas(8)[:-1].float()
    gen = torch.Generator().manual_seed(7)
    keys = list(targets)
    for _ in range(steps):
        p, seed = keys[int(torch.randint(len(keys), (1,), generator=gen))]
        x0v, x0a = targets[(p, seed)]
        s = sigmas[int(torch.randint(len(sigmas), (1,), generator=gen))]
        ev, ea = torch.randn(x0v.shape, generator=gen), torch.randn(x0a.shape, generator=gen)
        xv, xa = (1 - s) * x0v + s * ev, (1 - s) * x0a + s * ea
        vv, va = student(xv, xa, texts[p], text_lengths=torch.tensor([TEXT_LEN]))
        loss = torch.nn.functional.mse_loss(vv, ev - x0v) + torch.nn.functional.mse_loss(va, ea - x0a)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def _train_adapter(work: Path, checkpoint: Path, variant: str, dataset: Path, steps: int, log) -> Path:
    recipe = proxy_recipe(checkpoint, dataset, work / f"run-{variant}", steps=steps, model={"variant": variant})
    return train(recipe, log=log) / "adapter"


def compare(work: Path, *, steps: int = 300, distill_steps: int = 300, prompts: int = 4, seeds: int = 2,
            log=lambda *_: None) -> dict:  # fmt: skip
    """The table of the docstring, as ``{row: {column: value}}``."""
    torch.manual_seed(0)
    base = denoising_base(CONFIG, seed=0).eval()
    dataset = write_synthetic_dataset(work / "dataset", clips=1, frames=5, latent_hw=(4, 4), seed=0,
                                      text_len=(TEXT_LEN, TEXT_LEN), text_channels=CONFIG.text_in_channels)  # fmt: skip
    row = TrainingDataset(dataset).ds[0]
    clip = torch.tensor(np.asarray(row[VIDEO_LATENTS]))
    shapes = ((1, *clip.shape), (1, *np.asarray(row[AUDIO_LATENTS]).shape))
    gen = torch.Generator().manual_seed(99)
    drift = [torch.randn(1, TEXT_LEN, CONFIG.text_in_channels, generator=gen) for _ in range(prompts)]
    caption = torch.tensor(np.asarray(row[TEXT_EMBEDS]))[None]
    texts = [*drift, caption]
    seed_list = [1000 + s for s in range(seeds)]
    t0 = time.perf_counter()
    with torch.no_grad():
        targets = {(p, s): _teacher(base, text, shapes, s) for p, text in enumerate(texts) for s in seed_list}
    distilled = _distill(base, texts, targets, distill_steps)
    save_checkpoint(base, work / "base")
    save_checkpoint(distilled, work / "distill")
    log(f"teacher and distillation: {time.perf_counter() - t0:.0f} s")
    trained = {}
    for variant in ("distill", "base"):
        t = time.perf_counter()
        trained[variant] = _train_adapter(work, work / variant, variant, dataset, steps, log)
        log(f"adapter on {variant}: {time.perf_counter() - t:.0f} s")

    def measure(model) -> dict[str, float]:
        with torch.no_grad():
            quality, drift_d, learned = [], [], []
            for p in range(len(texts)):
                for s in seed_list:
                    got = _sample(model, texts[p], shapes, s)
                    if p < len(drift):
                        quality.append(_rel(got[0], targets[(p, s)][0][0]))
                        drift_d.append(_rel(got[0], _sample(distilled, texts[p], shapes, s)[0]))
                    else:
                        learned.append(_rel(got[0], clip))
        return {"8-step drift prompts vs teacher": statistics.median(quality),
                "drift vs distilled without adapter": statistics.median(drift_d),
                "caption vs training clip": statistics.median(learned)}

    table = {"base, no adapter (8 steps)": measure(base), "distilled, no adapter": measure(distilled)}
    for variant, name in (("distill", "distilled + adapter trained on distill"),
                          ("base", "distilled + adapter trained on base")):  # fmt: skip
        model = adapters.load(trained[variant], load_checkpoint(work / "distill"), check_base=False).eval()
        table[name] = measure(model)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="adapter training steps, each variant")
    parser.add_argument("--distill-steps", type=int, default=300, help="steps making the tiny distilled model")
    parser.add_argument("--prompts", type=int, default=4, help="drift prompts (random text)")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        table = compare(Path(tmp), steps=args.steps, distill_steps=args.distill_steps, prompts=args.prompts,
                        seeds=args.seeds, log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    columns = list(next(iter(table.values())))
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, values in table.items():
        print(f"| {name} | " + " | ".join(f"{values[c]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
