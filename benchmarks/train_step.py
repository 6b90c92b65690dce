"""LoRA training step cost against its floor, and the share of step time spent on data.

For each preset: (a) the floor, a forward+backward of the same frozen model without
LoRA (gradients flow to the input so the backward runs through every layer);
(b) a full LoRA training step (objective, backward, AdamW); (c) collating the batch
from the Arrow dataset. Ratios are measured side by side in one run (CPU by default).
On a GPU (`--device cuda --presets 15b`) it also prints s/step and peak memory for
the 15b shapes at 256p 5 s, rank 32, with and without gradient checkpointing.

    python benchmarks/train_step.py [--presets tiny mid] [--device cuda]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, parse_args

from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings
from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.recipe import LossSection
from hhtune.training.data import TrainingDataset
from hhtune.training.objective import flow_matching_loss
from hhtune.training.synthetic import write_synthetic_dataset

LATENT = {"tiny": (33, (16, 28)), "mid": (33, (16, 28)), "15b": (125, (16, 28))}  # frames, latent (H, W) at 256p 16:9


def measure(preset: str, device: str, repeats: int, checkpointing: bool, tmp: Path) -> dict[str, float]:
    cfg = ModelConfig.preset(preset)
    frames, hw = LATENT[preset]
    data = TrainingDataset(write_synthetic_dataset(tmp / preset, clips=2, frames=frames, latent_hw=hw,
                                                   text_channels=cfg.text_in_channels, text_len=(32, 32)))  # fmt: skip
    t_data = best_time(lambda: data.collate([0], 0), repeats)
    batch = data.collate([0], 0).to(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = HappyHorseTransformer(cfg)
    model.enable_gradient_checkpointing(checkpointing)
    for p in model.parameters():
        p.requires_grad_(False)

    def floor():
        video = batch.video.clone().requires_grad_(True)
        v, a = model(video, batch.audio, batch.text, text_lengths=batch.text_lengths)
        (v.square().mean() + a.square().mean()).backward()

    t_floor = best_time(floor, repeats, device)
    peft_model = add_lora(model, LoraSettings(rank=32))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    cfg_loss = LossSection()

    def step():
        out = flow_matching_loss(peft_model, batch, cfg_loss, seed=0, caption_dropout=0.0)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_step = best_time(step, repeats, device)
    out = {"floor_s": t_floor, "step_s": t_step, "data_s": t_data}
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    args = parse_args(__doc__)
    presets = args.presets
    print(f"device {args.device}; LoRA rank 32 on the shared layers")
    print(f"{'preset':6} {'ckpt':>5} {'step / floor':>13} {'data share':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            for ckpt in (False, True):
                r = measure(preset, args.device, args.repeats, ckpt, Path(tmp))
                line = (f"{preset:6} {ckpt!s:>5} {r['step_s'] / r['floor_s']:13.2f} "
                        f"{r['data_s'] / (r['data_s'] + r['step_s']):11.3f}")
                if args.device == "cuda":
                    line += f"  {r['step_s']:.3f} s/step, peak {r['peak_gib']:.1f} GiB"
                print(line)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
