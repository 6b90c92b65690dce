"""The memory plan against the measured peak of a real training step on the CPU.

For the ``mid`` preset (rank 32, fp32 compute as on the CPU) with and without gradient
checkpointing, side by side in one run: the plan's peak (fake-tensor trace of a reduced
model scaled by layer kind, plus parameters, gradients and AdamW state by size) against
the peak the CPU allocator reports through ``torch.profiler`` (``profile_memory``) for a
real step (forward, loss, backward, AdamW step) after a warm-up step, plus the bytes
alive before the step (weights and optimizer state).

    python benchmarks/memory_plan.py [--seconds 2] [--resolution 128]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from hhtune.adapters.inject import add_lora
from hhtune.adapters.settings import LoraSettings, expected_trainable_parameters
from hhtune.contract import TEXT_LENGTH
from hhtune.model import HappyHorseTransformer, ModelConfig
from hhtune.model.packing import audio_coords, padded_text_coords, video_coords
from hhtune.plan._scale import scaled_trace
from hhtune.plan._trace import StepShape
from hhtune.sampling.generate import latent_shapes

MB = 1024**2


def _peak_from_profile(prof) -> int:
    """Peak of the running sum of allocations in time order: each op's own (self) net bytes, and the
    ``[memory]`` rows for allocations and frees outside any op (e.g. a tensor dropped by Python)."""
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())  # fmt: skip
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def measured(config: ModelConfig, lora: LoraSettings, shape: StepShape, checkpointing: bool) -> tuple[int, int]:
    """(bytes alive before the step, peak bytes allocated during the step) of a real step."""
    torch.manual_seed(0)
    model = HappyHorseTransformer(config)
    model.set_compute_dtype("fp32")
    model.enable_gradient_checkpointing(checkpointing)
    peft = add_lora(model, lora)
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    b, (t, h, w) = shape.batch, shape.video
    nv = t * (h // 2) * (w // 2)

    def step() -> None:
        video = torch.randn(b, nv, config.video_in_channels)
        audio = torch.randn(b, shape.audio, config.audio_in_channels)
        text = torch.randn(b, shape.text, config.text_in_channels)
        coords = torch.cat([video_coords((t, h, w)).expand(b, nv, 9),
                            audio_coords(shape.audio).expand(b, shape.audio, 9),
                            padded_text_coords(torch.full((b,), shape.text), shape.text)], dim=1)  # fmt: skip
        out_v, out_a = model.forward_tokens(video, audio, text, coords)
        loss = out_v.float().square().mean() + out_a.float().square().mean()
        del out_v, out_a
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # creates the optimizer state
    resident = sum(p.nbytes for p in peft.parameters()) + sum(p.nbytes for p in model.buffers())
    resident += sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return resident, _peak_from_profile(prof)


def planned(config: ModelConfig, lora: LoraSettings, shape: StepShape, checkpointing: bool) -> tuple[int, int]:
    """(weights + LoRA + gradients + AdamW by size, peak of the traced step) as ``plan_settings`` adds them.

    The traced peak already holds the gradients of the traced layers; the plan adds all
    LoRA gradients once more, since the reduced model carries only some of them.
    """
    with torch.device("meta"):
        m = HappyHorseTransformer(config)
    weights = sum(p.nbytes for p in m.parameters()) + sum(b.nbytes for b in m.buffers())
    lora_bytes = expected_trainable_parameters(config, lora) * 4
    step = scaled_trace(config, lora, shape, training=True, checkpointing=checkpointing, compute="fp32")
    return weights + 4 * lora_bytes, step.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()
    config, lora = ModelConfig.preset("mid"), LoraSettings(rank=32)
    video, audio, _ = latent_shapes(args.seconds, "16:9", args.resolution)
    shape = StepShape(1, tuple(video[2:]), audio[1], TEXT_LENGTH)
    print(f"mid preset, rank 32, fp32 compute, {shape.tokens} tokens ({args.seconds} s at {args.resolution}p)")
    print(f"{'checkpointing':<15}{'plan MB':>10}{'measured MB':>13}{'ratio':>8}{'step plan':>11}{'step meas.':>12}")
    for ckpt in (False, True):
        p_res, p_step = planned(config, lora, shape, ckpt)
        m_res, m_step = measured(config, lora, shape, ckpt)
        plan, meas = p_res + p_step, m_res + m_step
        print(f"{ckpt!s:<15}{plan / MB:>10.1f}{meas / MB:>13.1f}{plan / meas:>8.3f}"
              f"{p_step / MB:>11.1f}{m_step / MB:>12.1f}")


if __name__ == "__main__":
    main()
