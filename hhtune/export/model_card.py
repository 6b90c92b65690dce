"""The model card (``README.md``) written beside an adapter, in place of PEFT's empty template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..adapters.formats.weights import AdapterMetadata
from ..contract import SR_VARIANTS
from ..io import atomic_write_text

#: The card's consent line when the run recorded none.
_NO_CONSENT = ("NOT RECORDED: confirm that every person filmed or voiced consented, and that you hold the rights, "
               "before sharing")
FORMAT_USE = {  # every format of ``python -m hhtune.export --format`` (a test checks this against FORMATS)
    "peft": "PEFT folder (`adapter_config.json` + safetensors), as written beside this card",
    "wan2gp": "one safetensors file for Wan2GP",
    "comfyui": "one safetensors file for ComfyUI's LoRA loader",
    "kohya": "one safetensors file with kohya / musubi-tuner key names",
    "merged": "the adapter merged into the base checkpoint, in the official sharded layout (needs `--base`)",
    "merged_single": "the merged checkpoint as one safetensors file (needs `--base`)",
    "merged_fp8": "the merged checkpoint with FP8 frozen weights (needs `--base`)",
}
STILLS = "validation"  # the card's stills are copied into this folder beside it, so the adapter folder ships alone


def write_model_card(folder: str | Path, info: dict, meta: AdapterMetadata | None = None) -> Path:
    """Write ``folder/README.md``: a model card in place of PEFT's empty template.

    ``info`` is a training run's ``run_info.json`` (steps, base, base_fingerprint, trigger_words,
    languages, dataset_summary, recipe_hash; optionally validation, consent, license, lora). Without
    ``validation``, the run folder around ``folder`` is read: the last step's stills under
    ``samples/`` (copied into ``folder/validation/`` and linked from there) and the last ``val/*``
    record of ``metrics.jsonl``. ``dataset_summary`` may hold ``clips``, ``seconds`` and ``hours``.
    """
    folder = Path(folder)
    data = info.get("dataset_summary") or {}
    trig = info.get("trigger_words") or (meta.trigger_words if meta else [])
    langs = info.get("languages") or (meta.languages if meta else [])
    hours, seconds = data.get("hours"), data.get("seconds")
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {info.get('base') or (meta.base_name if meta else None) or 'unknown'}",
        "tags: [lora, hhtune, happyhorse, daVinci-MagiHuman, text-to-video, text-to-audio]",
        f"language: [{', '.join(langs)}]" if langs else "language: []",
        f"license: {info.get('license') or 'other'}",
        "---",
        "",
        f"# {info.get('title') or 'HappyHorse LoRA'}",
        "",
        "A LoRA adapter for HappyHorse (daVinci-MagiHuman layout) trained with hhtune.",
        "",
        "## Base model",
        f"- checkpoint: `{info.get('base') or 'unknown'}`",
        f"- fingerprint: `{info.get('base_fingerprint') or 'unknown'}` (an adapter applies only to this base)",
        "",
        "## Use",
        f"- trigger words: {', '.join(f'`{t}`' for t in trig) if trig else 'none'}",
        f"- languages: {', '.join(langs) if langs else 'unknown'}",
        *_stage_lines(info.get("variant") or (meta.variant if meta else None)),
        "- other front-ends: `python -m hhtune.export PATH --format FORMAT`, FORMAT one of:",
        *(f"  - `{fmt}`: {use}" for fmt, use in FORMAT_USE.items()),
        "",
        "## Training data",
        f"- clips: {data.get('clips', 'unknown')}",
        f"- hours: {_hours(hours, seconds)}",
        f"- languages: {', '.join(langs) if langs else 'unknown'}",
        f"- dataset: `{data.get('dataset', 'unknown')}` (fingerprint `{data.get('fingerprint') or 'unknown'}`)",
        "",
        "## Recipe",
        f"- steps: {info.get('steps', 'unknown')}",
        f"- recipe hash: `{info.get('recipe_hash') or 'unknown'}`",
    ]
    if info.get("lora"):
        lines.append(f"- lora: `{json.dumps(info['lora'], sort_keys=True)}`")
    lines += ["", "## Validation"]
    val = info.get("validation") or _run_validation(folder.parent, folder)
    stills = val.get("stills") or []
    metrics = val.get("metrics") or {}
    lines += [f"![validation still]({s})" for s in stills] or ["- no validation stills recorded"]
    lines += [f"- {k}: {v}" for k, v in sorted(metrics.items())] or ["- no validation metrics recorded"]
    lines += _evaluation_lines(info.get("evaluation"))
    lines += [
        "",
        "## Consent and rights",
        f"- footage and voices: {info.get('consent') or _NO_CONSENT}",
        "",
    ]
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _evaluation_lines(evaluation: dict | None) -> list[str]:
    """The "Evaluation" section: what ``python -m hhtune.evaluate`` recommends (none before it ran)."""
    if not evaluation:
        return []
    strength = evaluation.get("recommended_strength")
    return [
        "",
        "## Evaluation",
        f"- recommended strength: {strength if strength is not None else 'not measured'} (distilled model, 8 steps)",
        f"- recommended checkpoint: `{evaluation.get('recommended_checkpoint') or 'unknown'}`",
        f"- report: `{evaluation.get('report') or 'eval/report.html'}`",
    ]


def _stage_lines(variant: str | None) -> list[str]:
    """Where the adapter applies: the first stage or a super-resolution stage, in hhtune and in Wan2GP."""
    if variant in SR_VARIANTS:
        return [f"- stage: the {variant} super-resolution model only (an adapter of another stage is refused)",
                "- `python -m hhtune.sample --sr " + variant.removeprefix("sr_") + " --sr-model SR_DIR "
                "--sr-adapter PATH ...`",
                "- Wan2GP loads every LoRA into both DiTs: set this one's multiplier to `0;1` (SR stage only)",
                ]  # fmt: skip
    return ["- stage: the first stage (base or distill); not the super-resolution models",
            "- `python -m hhtune.sample --adapter PATH[:video=1.0,audio=1.0] ...`",
            "- Wan2GP loads every LoRA into both DiTs: set this one's multiplier to `1;0` (a plain `1` applies it to "
            "the SR stage too)"]  # fmt: skip


def _hours(hours: float | None, seconds: float | None) -> str:
    if seconds is not None:
        return f"{seconds / 3600:.3g} ({seconds:.1f} s)"
    return str(hours) if hours is not None else "unknown"


def _run_validation(run_dir: Path, folder: Path) -> dict:
    """The latest validation stills (copied into ``folder/validation``) and metrics of a run folder (or empty)."""
    steps = sorted((run_dir / "samples").glob("step-*")) if (run_dir / "samples").is_dir() else []
    stills = []
    for png in sorted(steps[-1].glob("*.png")) if steps else []:
        (folder / STILLS).mkdir(exist_ok=True)
        shutil.copy2(png, folder / STILLS / png.name)
        stills.append(f"{STILLS}/{png.name}")
    metrics: dict = {}
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            found = {k.removeprefix("val/"): v for k, v in record.items() if k.startswith("val/")}
            metrics = found or metrics
    return {"stills": stills, "metrics": metrics}
