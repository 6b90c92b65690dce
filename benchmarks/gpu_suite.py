"""The prepared GPU benchmark: one H100/H200, random weights in the 15B shapes, at most 8 minutes.

    python benchmarks/gpu_suite.py --out DIR [--dry-run] [--budget-s 480]

Parts, each reporting its own error while the others still run (``DIR/gpu_suite.json`` and
``DIR/gpu_suite.md``):

- ``train``: s/step and MFU of a LoRA step (rank 32, ``recipes/brand_style_lora.yaml``, batch 1,
  gradient checkpointing) at 256p 5 s and 540p 5 s, eager and compiled (``model.compile``
  when the recipe has that key, else reported as not available).
- ``attention``: the attention kernels that ran (``torch.profiler`` names) in a step with a
  caption and one with a dropped caption, and the path they mean (flash, cuDNN, efficient, math).
- ``memory``: measured peak of a training step against ``hhtune.plan`` for the 80 GB recipe
  at 256p and for a 48 GB tier at 540p (the plan's recommended settings), with the card
  capped to the tier by ``torch.cuda.set_per_process_memory_fraction``.
- ``sample``: the 8-step distilled DiT sample at 256p 5 s against the official 1.6 s.

MFU = model FLOPs / (seconds x the device's dense bf16 peak). Model FLOPs of a training step
are ``3 x forward``: ``6 x active parameters x tokens`` for the linears a token passes through
(one expert per token in the sandwich layers) plus ``12 x layers x tokens^2 x query width`` for
attention (QK^T and PV, forward and backward); recompute and LoRA are not counted, as usual.
``--dry-run`` runs the same code with the ``tiny`` preset on the CPU in seconds (CI keeps it working).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import forward_flops

from hhtune.adapters.inject import add_lora
from hhtune.contract import TEXT_LENGTH
from hhtune.model.placement import apply_block_swap
from hhtune.plan import GB, plan_recipe
from hhtune.recipe import ModelSection, Recipe, load_recipe
from hhtune.sampling.generate import latent_shapes, model_velocity_fn
from hhtune.sampling.samplers import sample_distilled
from hhtune.training import build_model
from hhtune.training.data import Batch
from hhtune.training.objective import flow_matching_loss

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "brand_style_lora.yaml"
OFFICIAL_SAMPLE_S = 1.6  # 8-step 256p DiT on one H100 (FlashAttention-3, full-graph compile)
# dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets; the first name found in the device name wins
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0))


@dataclass(frozen=True)
class Setup:
    """What a run measures: the preset, the device, the clips and the memory tiers."""

    preset: str
    device: str
    seconds: float
    resolutions: dict[str, int]  # label -> --resolution (540p is 544: 540 gives an odd latent height)
    tiers: tuple[tuple[float, str], ...]  # (GB, clip label)
    steps: int  # measured steps after one warm-up


FULL = Setup("15b", "cuda", 5.0, {"256p": 256, "540p": 544}, ((80.0, "256p"), (48.0, "540p")), steps=3)
DRY = Setup("tiny", "cpu", 0.2, {"256p": 32, "540p": 64}, ((1.0, "256p"), (0.75, "540p")), steps=1)


class Skipped(Exception):  # noqa: N818 -- control flow: a part not run is a result, not an error
    """A part (or measurement) not run: not available here, or out of time."""


class Clock:
    """The run's time budget; a measurement that would start after it is skipped."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.monotonic(), budget_s

    def check(self, what: str) -> None:
        if time.monotonic() - self.start > self.budget:
            raise Skipped(f"{what}: skipped, the {self.budget:.0f} s budget is spent")


def peak_tflops(device: str) -> tuple[str, float | None]:
    """The device's name and dense bf16 peak (TFLOP/s), None where the table has no entry."""
    if device != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def train_flops(recipe: Recipe, tokens: int) -> float:
    """Model FLOPs of one training step of one clip: 3 x the forward's (see the module docstring)."""
    return 3 * forward_flops(recipe.preset_config(), tokens)


def recipe_for(setup: Setup, overrides: list[str] = ()) -> Recipe:
    """``recipes/brand_style_lora.yaml`` on random weights of ``setup.preset``, no dataset, no eval checkpoint."""
    base = ["model.checkpoint=null", f"model.preset={setup.preset}", "model.eval_checkpoint=null",
            "data.dataset=/nonexistent/gpu_suite"]  # fmt: skip
    return load_recipe(RECIPE, [*base, *overrides])


def clip_batch(recipe: Recipe, setup: Setup, label: str, device: str, *, caption: bool = True) -> Batch:
    """A random batch of one clip of ``label``'s size with a full-length (or dropped) caption."""
    cfg = recipe.preset_config()
    (_, c, t, h, w), (_, frames, _), _ = latent_shapes(setup.seconds, "16:9", setup.resolutions[label])
    gen = torch.Generator().manual_seed(0)
    text_len = TEXT_LENGTH if setup.preset == "15b" else 16
    batch = Batch(video=torch.randn(1, c, t, h, w, generator=gen), audio=torch.randn(1, frames, 64, generator=gen),
                  audio_lengths=torch.tensor([frames]),
                  text=torch.randn(1, text_len, cfg.text_in_channels, generator=gen),
                  text_lengths=torch.tensor([text_len if caption else 0]), speech_mask=torch.zeros(1, frames),
                  reference=None, has_reference=torch.tensor([False]), index=0)  # fmt: skip
    return batch.to(device)


def tokens_of(batch: Batch) -> int:
    _, _, t, h, w = batch.video.shape
    return t * (h // 2) * (w // 2) + int(batch.audio_lengths[0]) + int(batch.text_lengths[0])


def build(recipe: Recipe, device: str, *, compiled: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The recipe's model with LoRA and block swap, built on ``device``, and AdamW over the adapter."""
    section = recipe.model
    if compiled:
        if "compile" not in ModelSection.model_fields:
            raise Skipped("not available: this hhtune has no model.compile recipe key")
        section = section.model_copy(update={"compile": True})
    with torch.device(device):  # random init straight on the device (no host copy of the weights)
        model = build_model(section, device)
    model.enable_gradient_checkpointing(section.gradient_checkpointing)
    peft_model = add_lora(model, recipe.lora)
    apply_block_swap(peft_model, section.blocks_to_swap, device)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, torch.optim.AdamW(params, lr=1e-5)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch, recipe: Recipe) -> None:
    out = flow_matching_loss(model, batch, recipe.loss, seed=0, caption_dropout=0.0)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, device: str, steps: int) -> float:
    """Mean seconds of ``fn`` over ``steps`` runs after one warm-up (which also compiles)."""
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / steps


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def part_train(setup: Setup, clock: Clock) -> dict:
    """s/step and MFU per clip size, eager and compiled."""
    recipe = recipe_for(setup)
    name, peak = peak_tflops(setup.device)
    rows: dict[str, dict] = {}
    for mode in ("eager", "compiled"):
        try:
            clock.check(f"train {mode}")
            rows.update(_train_mode(recipe, setup, clock, mode, peak))
        except Exception as e:  # reported, the other mode still runs
            rows.update({f"{label} {mode}": _error(e) for label in setup.resolutions})
        _free(setup.device)
    return {"device": name, "peak_bf16_tflops": peak, "runs": rows}


def _train_mode(recipe: Recipe, setup: Setup, clock: Clock, mode: str, peak: float | None) -> dict[str, dict]:
    model, opt = build(recipe, setup.device, compiled=mode == "compiled")
    rows: dict[str, dict] = {}
    for label in setup.resolutions:
        try:
            clock.check(f"train {label} {mode}")
            batch = clip_batch(recipe, setup, label, setup.device)
            seconds = timed(functools.partial(train_step, model, opt, batch, recipe), setup.device, setup.steps)
            flops = train_flops(recipe, tokens_of(batch))
            rows[f"{label} {mode}"] = {"s_per_step": seconds, "tokens": tokens_of(batch), "model_tflop": flops / 1e12,
                                       "mfu": flops / seconds / (peak * 1e12) if peak else None}  # fmt: skip
        except Exception as e:
            rows[f"{label} {mode}"] = _error(e)
    return rows


ATTENTION_PATHS = (("math", r"_scaled_dot_product_attention_math|attention_math"), ("flex", r"flex|triton_tem"),
                   ("cudnn", r"cudnn.*(attention|sdpa|fmha)|sdpa.*cudnn"),
                   ("efficient", r"efficient|mem_eff|fmha_cutlass|cutlassF"), ("flash", r"flash"))  # fmt: skip


def attention_paths(names: list[str]) -> list[str]:
    """The attention paths that ``names`` (profiler op and kernel names) show, e.g. ``["flash"]``."""
    return [path for path, pattern in ATTENTION_PATHS if any(re.search(pattern, n, re.I) for n in names)]


def part_attention(setup: Setup, clock: Clock) -> dict:
    """Profiler names of the attention ops and kernels in one eager step, with and without a caption."""
    recipe = recipe_for(setup)
    model, opt = build(recipe, setup.device)
    out: dict[str, dict] = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device == "cuda" else [])
    label = next(iter(setup.resolutions))
    for case, caption in (("caption", True), ("dropped caption", False)):
        try:
            clock.check(f"attention {case}")
            batch = clip_batch(recipe, setup, label, setup.device, caption=caption)
            train_step(model, opt, batch, recipe)  # warm-up outside the profile
            with profile(activities=activities) as prof:
                train_step(model, opt, batch, recipe)
                _sync(setup.device)
            names = sorted({e.key for e in prof.key_averages()
                            if re.search(r"attention|attn|fmha|flash|sdpa|flex|softmax", e.key, re.I)})  # fmt: skip
            out[f"{label} {case}"] = {"paths": attention_paths(names), "names": names}
        except Exception as e:
            out[f"{label} {case}"] = _error(e)
    del model, opt
    _free(setup.device)
    return out


def part_memory(setup: Setup, clock: Clock) -> dict:
    """Measured training peak against the plan, per tier, on a card capped to the tier."""
    out: dict[str, dict] = {}
    for gb, label in setup.tiers:
        key = f"{gb:g} GB {label}"
        try:
            clock.check(f"memory {key}")
            out[key] = _tier(setup, gb, label)
        except Exception as e:
            out[key] = _error(e)
    return out


def _tier(setup: Setup, gb: float, label: str) -> dict:
    res, recipe = setup.resolutions[label], recipe_for(setup)
    plan = plan_recipe(recipe, gb, seconds=setup.seconds, resolution=res)
    if plan.recommendation is None:
        return {"planned": None, "note": "the plan finds no setting that fits one process"}
    overrides = [o for o in plan.recommendation.settings.overrides() if o != "model.fp8_base=false"]
    if "model.fp8_base=true" in overrides:
        return {"overrides": overrides, "note": "the plan needs an FP8 checkpoint; random weights have none"}
    recipe = recipe_for(setup, overrides)
    planned = plan_recipe(recipe, gb, seconds=setup.seconds, resolution=res).train_peak_gb
    row = {"overrides": overrides, "planned_train_peak_gb": planned, "measured_peak_gb": None, "ratio": None}
    with _capped(setup.device, gb):
        model, opt = build(recipe, setup.device)
        batch = clip_batch(recipe, setup, label, setup.device)
        for _ in range(2):  # the second step holds the optimizer state
            train_step(model, opt, batch, recipe)
        _sync(setup.device)
        if setup.device == "cuda":
            measured = torch.cuda.max_memory_allocated() / GB
            row.update(measured_peak_gb=measured, reserved_peak_gb=torch.cuda.max_memory_reserved() / GB,
                       ratio=measured / planned)  # fmt: skip
        else:
            row["note"] = "no CUDA: the step ran, its memory was not measured"
        del model, opt, batch
    return row


@contextlib.contextmanager
def _capped(device: str, gb: float):
    """The CUDA card limited to ``gb`` for this process, with fresh peak statistics."""
    if device != "cuda":
        yield
        return
    _free(device)
    total = torch.cuda.get_device_properties(0).total_memory / GB
    torch.cuda.set_per_process_memory_fraction(min(1.0, gb / total))
    torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        _free(device)


def part_sample(setup: Setup, clock: Clock) -> dict:
    """Seconds of the 8-step distilled DiT sample (no VAE, no text encoder) at 256p against the official 1.6 s."""
    recipe = recipe_for(setup)
    clock.check("sample")
    with torch.device(setup.device):
        model = build_model(recipe.model, setup.device).eval()
    label = next(iter(setup.resolutions))
    vshape, ashape, _ = latent_shapes(setup.seconds, "16:9", setup.resolutions[label])
    text = clip_batch(recipe, setup, label, setup.device).text
    fn = model_velocity_fn(model, text, text.shape[1])

    def sample() -> None:
        sample_distilled(fn, vshape, ashape, generator=torch.Generator().manual_seed(0), device=setup.device)

    seconds = timed(sample, setup.device, setup.steps)
    del model
    _free(setup.device)
    return {"clip": f"{label} {setup.seconds:g} s", "seconds": seconds, "official_s": OFFICIAL_SAMPLE_S,
            "ratio_to_official": seconds / OFFICIAL_SAMPLE_S}  # fmt: skip


PARTS = {"train": part_train, "attention": part_attention, "memory": part_memory, "sample": part_sample}


def _error(e: Exception) -> dict:
    if isinstance(e, Skipped):
        return {"skipped": str(e)}
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=-3)}


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run(setup: Setup, budget_s: float) -> dict:
    """Every part, each failing soft, with the device and date."""
    clock = Clock(budget_s)
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device": peak_tflops(setup.device)[0], "preset": setup.preset, "torch": torch.__version__,
              "parts": {}}  # fmt: skip
    for name, part in PARTS.items():
        t = time.monotonic()
        try:
            result["parts"][name] = part(setup, clock)
        except Exception as e:  # one part's failure is its own result
            result["parts"][name] = _error(e)
        result["parts"][name]["wall_s"] = round(time.monotonic() - t, 1)
    result["wall_s"] = round(time.monotonic() - clock.start, 1)
    return result


def markdown(result: dict) -> str:
    """The result as tables for benchmarks/RESULTS.md."""
    p = result["parts"]
    lines = [f"GPU suite, {result['device']}, {result['date']}, preset {result['preset']}, torch {result['torch']}", ""]
    lines += ["| train | s/step | MFU |", "| --- | --- | --- |"]
    for key, r in p["train"].get("runs", {}).items():
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "—"
        lines.append(f"| {key} | {_num(r, 's_per_step')} | {mfu if 's_per_step' in r else _why(r)} |")
    lines += ["", "| attention | paths |", "| --- | --- |"]
    for key, r in ((k, v) for k, v in p["attention"].items() if isinstance(v, dict)):
        lines.append(f"| {key} | {', '.join(r['paths']) or 'none found' if 'paths' in r else _why(r)} |")
    lines += ["", "| memory tier | settings | planned GB | measured GB |", "| --- | --- | --- | --- |"]
    for key, r in ((k, v) for k, v in p["memory"].items() if isinstance(v, dict)):
        lines.append(f"| {key} | {' '.join(r.get('overrides', []))} | {_num(r, 'planned_train_peak_gb')} | "
                     f"{_num(r, 'measured_peak_gb') if r.get('measured_peak_gb') else _why(r)} |")  # fmt: skip
    s = p["sample"]
    lines += ["", "| 8-step sample | seconds | official |", "| --- | --- | --- |",
              f"| {s.get('clip', '')} | {_num(s, 'seconds') if 'seconds' in s else _why(s)} | {OFFICIAL_SAMPLE_S} |"]
    return "\n".join(lines) + "\n"


def _num(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if isinstance(row.get(key), float) else "—"


def _why(row: dict) -> str:
    return str(row.get("error") or row.get("skipped") or row.get("note") or "—").splitlines()[0][:120]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dry-run", action="store_true", help="the tiny preset on the CPU (CI)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no measurement after this many seconds")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    result = run(DRY if args.dry_run else FULL, args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu_suite.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
