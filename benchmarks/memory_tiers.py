"""The README's "Memory tiers" table, generated from ``hhtune.plan`` so that the two cannot drift.

Each tier is a clip (5 s at 256p or 544p) on some GPUs. Its row is what the plan says for
``recipes/brand_style_lora.yaml`` with the clip given explicitly (``--seconds``/``--resolution`` and the same
validation clip), at that memory and world size:

* the recipe as shipped when it fits;
* otherwise ``model.eval_checkpoint=null`` (validate on the trained model: the second DiT costs memory and no
  speed is gained by keeping it) plus the plan's own recommendation for the rest, cheapest first;
* otherwise "does not fit".

    python benchmarks/memory_tiers.py                 # print the table (15b traces: several minutes on a CPU)
    python benchmarks/memory_tiers.py --write-readme  # rewrite it between the markers in README.md

``tests/test_readme_tiers.py`` re-plans the README's rows and compares.
"""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import hhtune.plan as plan_module
from hhtune.adapters.settings import LoraSettings
from hhtune.model import ModelConfig
from hhtune.plan import Plan, plan_recipe
from hhtune.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "brand_style_lora.yaml"
README = ROOT / "README.md"
BEGIN, END = "<!-- memory-tiers:begin (benchmarks/memory_tiers.py) -->", "<!-- memory-tiers:end -->"
SECONDS = 5.0
RESOLUTIONS = {"256p": 256, "540p": 544}  # 540 gives an odd latent height
GPUS = [(1, 80), (1, 48), (1, 32), (1, 24), (2, 48), (2, 24), (4, 24), (8, 24)]
HEADER = ["clip", "GPUs", "overrides of `recipes/brand_style_lora.yaml`", "train peak", "validation peak"]
NO_FIT = "does not fit"


@dataclass(frozen=True)
class Tier:
    """One row: the clip, the GPUs, and what the plan says for them."""

    clip: str
    world_size: int
    gpu_memory_gb: int
    overrides: tuple[str, ...] | None  # None: nothing fits
    train_peak_gb: float | None = None
    validation_peak_gb: float | None = None

    @property
    def resolution(self) -> int:
        """The base resolution the clip name stands for."""
        return RESOLUTIONS[self.clip.split()[0]]

    @property
    def gpus(self) -> str:
        """The GPU column, e.g. ``1 x 80 GB`` or ``FSDP2 4 x 24 GB``."""
        return f"{'FSDP2 ' if self.world_size > 1 else ''}{self.world_size} x {self.gpu_memory_gb} GB"

    def row(self) -> str:
        """The tier as a Markdown table row."""
        if self.overrides is None:
            cells = [NO_FIT + (" (no block swap under FSDP)" if self.world_size > 1 else ""), "—", "—"]
        else:
            cells = [" ".join(f"`{o}`" for o in self.overrides) or "(as shipped)",
                     f"{self.train_peak_gb:.1f}", f"{self.validation_peak_gb:.1f}"]  # fmt: skip
        return "| " + " | ".join([self.clip, self.gpus, *cells]) + " |"


def tier_recipe(resolution: int, overrides: tuple[str, ...] = ()) -> Recipe:
    """The recipe of a tier: the shipped one, validating on the tier's clip, with ``overrides``."""
    clip = [f"validation.seconds={SECONDS:g}", f"validation.base_resolution={resolution}"]
    return load_recipe(RECIPE, [*clip, *overrides])


def tier_plan(resolution: int, gpu_memory_gb: float, world_size: int, overrides: tuple[str, ...] = ()) -> Plan:
    """``python -m hhtune.plan RECIPE [clip] [overrides] --seconds 5 --resolution RES --gpu-memory GB``."""
    return plan_recipe(tier_recipe(resolution, overrides), gpu_memory_gb, world_size=world_size, seconds=SECONDS,
                       resolution=resolution)  # fmt: skip


def _changed(recipe: Recipe, plan: Plan) -> tuple[str, ...]:
    """The recommendation's overrides that differ from the recipe's own memory settings."""
    return tuple(o for o in plan.settings.overrides()
                 if o.split("=", 1)[1] != str(getattr(recipe.model, o.split("=", 1)[0][6:])).lower())  # fmt: skip


def make_tier(clip: str, world_size: int, gpu_memory_gb: int) -> Tier:
    """The row the plan gives for one clip on some GPUs (policy in the module docstring)."""
    res = RESOLUTIONS[clip.split()[0]]
    shipped = tier_plan(res, gpu_memory_gb, world_size)
    if shipped.fits:
        return Tier(clip, world_size, gpu_memory_gb, (), shipped.train_peak_gb, shipped.validation_peak_gb)
    base = ("model.eval_checkpoint=null",)
    rec = tier_plan(res, gpu_memory_gb, world_size, base).recommendation
    if rec is None:
        return Tier(clip, world_size, gpu_memory_gb, None)
    overrides = base + _changed(tier_recipe(res), rec)
    return Tier(clip, world_size, gpu_memory_gb, overrides, rec.train_peak_gb, rec.validation_peak_gb)


def table(tiers: list[Tier]) -> str:
    """The tiers as a Markdown table."""
    return "\n".join(["| " + " | ".join(HEADER) + " |", "| " + " | ".join("---" for _ in HEADER) + " |",
                      *(t.row() for t in tiers)])  # fmt: skip


def parse_table(text: str) -> list[Tier]:
    """The tiers of the table between the markers of a README text (``ValueError`` when it is malformed)."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"README has no {BEGIN} ... {END} section")
    body = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()
    if not body or [c.strip() for c in body[0].strip("|").split("|")] != HEADER:
        raise ValueError(f"the memory tiers table must start with the header {HEADER}")
    tiers = []
    for line in body[2:]:
        clip, gpus, overrides, train, val = (c.strip() for c in line.strip().strip("|").split("|"))
        m = re.fullmatch(r"(?:FSDP2 )?(\d+) x (\d+) GB", gpus)
        if clip.split()[0] not in RESOLUTIONS or m is None:
            raise ValueError(f"bad memory tier row: {line}")
        world, memory = int(m[1]), int(m[2])
        if overrides.startswith(NO_FIT):
            tiers.append(Tier(clip, world, memory, None))
            continue
        keys = () if overrides == "(as shipped)" else tuple(re.findall(r"`([^`]+)`", overrides))
        tiers.append(Tier(clip, world, memory, keys, float(train), float(val)))
    return tiers


def write_readme(tiers: list[Tier], path: Path = README) -> None:
    """Replace the table between the markers of ``path``."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{table(tiers)}\n{END}{tail}")


def _memoise_traces() -> None:
    """Trace each (shape, settings) once per process: the rows repeat them across memory sizes and world sizes."""
    trace = plan_module.scaled_trace

    @functools.cache
    def cached(config_json, lora_json, shape, kwargs):
        config, lora = ModelConfig.model_validate_json(config_json), LoraSettings.model_validate_json(lora_json)
        return trace(config, lora, shape, **dict(kwargs))

    def memoised(config, lora, shape, **kwargs):
        return cached(config.model_dump_json(), lora.model_dump_json(), shape, tuple(sorted(kwargs.items())))

    plan_module.scaled_trace = memoised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-readme", action="store_true", help=f"rewrite the table in {README.name}")
    args = parser.parse_args()
    _memoise_traces()
    tiers = []
    for clip in (f"{name} {SECONDS:g} s" for name in RESOLUTIONS):
        for world_size, memory in GPUS:
            tiers.append(make_tier(clip, world_size, memory))
            print(tiers[-1].row(), flush=True)
    if args.write_readme:
        write_readme(tiers)
        print(f"wrote {len(tiers)} rows to {README}")


if __name__ == "__main__":
    main()
