"""What a run produces besides checkpoints: validation samples, the final adapter, run_info.json and exports.

Everything these need is checked when the run starts (:func:`check_output_dependencies`),
so a missing package stops the run before the model loads instead of after hours of training.
Validation prompts are encoded once, before the transformer is built, and the text encoder is
freed at once (:func:`encode_validation_prompts`): it never sits in memory beside the model.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import torch

from ..adapters.base_identity import base_model_id
from ..contract import TEXT_EMBEDS, VIDEO_LATENTS
from ..encoders import EncoderPaths
from ..export import export_adapter
from ..export.model_card import write_model_card
from ..io import atomic_write_text
from ..recipe import Recipe
from ..sampling.generate import encode_prompts
from ..sampling.metrics import clip_summary
from ..sampling.super_resolution import SrStage, load_sr_stage
from ..sampling.validation import run_validation
from .data import TrainingDataset
from .errors import TrainingError
from .metrics import plot_loss_curve
from .validation_model import validation_model

PromptFeatures = list[tuple[torch.Tensor, int]]


def validation_enabled(recipe: Recipe) -> bool:
    """Whether the run renders validation samples at all."""
    v = recipe.validation
    return bool(v.prompts) and (v.at_end or v.every_steps is not None)


def check_output_dependencies(recipe: Recipe) -> None:
    """Fail, naming the missing package, if validation or export as configured could not run."""
    needs: list[tuple[str, str]] = []  # (module, what needs it)
    if validation_enabled(recipe):
        needs += [(m, "validation") for m in ("hhtune.sampling.validation", "diffusers", "transformers", "scipy.signal",
                                              "soundfile", "matplotlib", "PIL")]  # fmt: skip
        if recipe.validation.reference_images:
            needs.append(("hhtune.media", "validation.reference_images"))
        if recipe.validation.acoustic_model:
            needs += [("hhtune.speech.align", "validation.acoustic_model"),
                      ("hhtune.speech.g2p", "validation.acoustic_model")]  # fmt: skip
        if shutil.which("ffmpeg") is None:
            raise TrainingError("validation writes mp4 files with ffmpeg, which is not on PATH: install it "
                                "(apt-get install ffmpeg) or turn validation off (validation.prompts=[])")  # fmt: skip
    if recipe.export.formats:
        needs.append(("hhtune.export", "export"))
    if recipe.logging.wandb_mode != "disabled":
        needs.append(("wandb", "logging.wandb_mode"))
    for module, what in needs:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None) or module
            raise TrainingError(
                f"{what} needs the Python package {missing!r}, which cannot be imported ({e}); install it "
                f"(pip install -e . installs every dependency hhtune declares) or turn {what} off"
            ) from e


def encode_validation_prompts(recipe: Recipe, data: TrainingDataset, device: torch.device,
                              needed: bool = True) -> PromptFeatures | None:  # fmt: skip
    """Text features of every validation prompt, computed once for the whole run (CPU tensors).

    A prompt equal to a clip's caption takes that clip's stored ``text_embeds`` (the dataset was
    encoded with the same encoder); the others are encoded in one batch with the text encoder
    loaded in bf16 on CUDA, which is freed before this returns. ``needed=False`` (a process that
    does not sample) returns ``None``.
    """
    if not validation_enabled(recipe) or not needed:
        return None
    by_caption = {c: i for i, c in enumerate(data.ds["caption"])}
    out: dict[int, tuple[torch.Tensor, int]] = {}
    for i, p in enumerate(recipe.validation.prompts):
        if p in by_caption:
            feats = torch.as_tensor(data.ds[by_caption[p]][TEXT_EMBEDS], dtype=torch.float32)[None]
            out[i] = (feats, int(feats.shape[1]))
    todo = [i for i in range(len(recipe.validation.prompts)) if i not in out]
    if todo:
        encoded = encode_prompts([recipe.validation.prompts[i] for i in todo], encoder_paths(recipe, data).text_encoder,
                                 device)  # fmt: skip
        out.update(zip(todo, encoded))
    return [out[i] for i in range(len(recipe.validation.prompts))]


def encoder_paths(recipe: Recipe, data: TrainingDataset):
    """The encoders validation uses: ``validation.encoders``, else those the dataset was encoded with."""
    if recipe.validation.encoders:
        folder = Path(recipe.validation.encoders)
        return EncoderPaths(video_vae=folder / "video_vae", audio_vae=folder / "audio_vae",
                            text_encoder=folder / "text_encoder")
    enc = data.manifest.get("encoders") or {}
    if not enc:
        raise TrainingError("validation needs encoders: set validation.encoders (the dataset's manifest names none)")
    return EncoderPaths(**{k: enc[k] for k in ("video_vae", "audio_vae", "text_encoder")})


def training_clip_summaries(recipe: Recipe, data: TrainingDataset) -> list[torch.Tensor] | None:
    """Every training clip's video latents pooled small (``clip_summary``), read once for the memorisation metric."""
    if not validation_enabled(recipe):
        return None

    return [clip_summary(row[VIDEO_LATENTS]) for row in data.ds.select_columns([VIDEO_LATENTS])]


def run_validation_step(recipe: Recipe, accelerator, model: torch.nn.Module, prompts: PromptFeatures | None,
                        data: TrainingDataset, run_dir: Path, step: int, metrics, log, *, sharded: bool,
                        clips: list[torch.Tensor] | None = None) -> None:  # fmt: skip
    """Render the validation prompts with the distilled sampler.

    The main process writes and scores the clips. A sharded model needs every process in each
    forward pass, so then the others sample too (same seeds, same inputs) without decoding.
    """
    main = accelerator.is_main_process
    if not validation_enabled(recipe) or not (main or sharded):
        return

    v = recipe.validation
    sr = validation_sr_stage(recipe) if main else None
    with validation_model(recipe, model, accelerator.device) as m:
        scores = run_validation(
            m, v.prompts, encoders=encoder_paths(recipe, data), out_dir=run_dir / "samples" / f"step-{step:08d}",
            step=step, seed=v.seed, reference_images=v.reference_images or None, acoustic_model=v.acoustic_model,
            wandb_run=metrics.wandb_run if metrics else None, seconds=v.seconds, aspect=v.aspect,
            base_resolution=v.base_resolution, text_features=prompts, write=main, vae_tiling=v.vae_tiling,
            offload_model=v.offload_model and not sharded, training_clips=clips, sr=sr,
        )  # fmt: skip
    del sr
    accelerator.wait_for_everyone()
    if not main:
        return
    if metrics is not None and scores:
        metrics.log(step, {f"val/{k}": val for k, val in scores.items()})
    log(format_scores(step, scores))
    if recipe.model.checkpoint is None and recipe.model.preset == "tiny":
        log("  (the tiny preset has random weights: its samples are noise by design)")


def validation_sr_stage(recipe: Recipe) -> SrStage | None:
    """The SR stage of ``validation.sr``, loaded on the host (it visits the device only for its own steps)."""
    v = recipe.validation
    if v.sr is None:
        return None
    return load_sr_stage(v.sr, v.sr_model, v.sr_adapter, compute_dtype=recipe.model.compute_dtype)


def format_scores(step: int, scores: dict[str, float]) -> str:
    """The validation scores as a small table, one metric a line."""
    if not scores:
        return f"validation at step {step}: no scores"
    width = max(len(k) for k in scores)
    rows = [f"  {k.ljust(width)}  {v:>10.4g}" if isinstance(v, float | int) else f"  {k.ljust(width)}  {v}"
            for k, v in scores.items()]  # fmt: skip
    return "\n".join([f"validation at step {step}:", *rows])


def finish_run(recipe: Recipe, peft_model, data: TrainingDataset, run_dir: Path, progress, metrics, log) -> None:
    """Main process: final adapter (PEFT format), run_info.json, exports and the loss curve."""
    adapter_dir = run_dir / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    info = {
        "steps": progress.step,
        "nonfinite_steps": progress.nonfinite_steps,
        "recipe_hash": recipe.hash(),
        "trigger_words": recipe.export.trigger_words,
        "languages": sorted({str(x) for x in data.ds["language"]}),
        "dataset_summary": {"clips": len(data), "seconds": round(_clip_seconds(data), 3), "dataset": str(data.path),
                            "fingerprint": data.manifest.get("fingerprint")},
        "base_fingerprint": base_model_id(peft_model),
        "base": recipe.model.checkpoint or recipe.model.preset,
        "variant": recipe.model.variant,  # an SR stage's adapter applies to that stage only
    }
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))

    write_model_card(adapter_dir, {**info, "lora": recipe.lora.model_dump()})
    _export(recipe, peft_model, run_dir, info, log)
    if metrics is not None:
        plot_loss_curve(metrics.history(), run_dir / "loss_curve.png")
        metrics.finish()
    log(f"done: {progress.step} steps; adapter in {adapter_dir}")


def _clip_seconds(data: TrainingDataset) -> float:
    """The footage the dataset's clips hold, in seconds (from the rows' ``start_s``/``end_s``)."""
    times = data.ds.select_columns(["start_s", "end_s"])
    return float(sum(end - start for start, end in zip(times["start_s"], times["end_s"])))


def _export(recipe: Recipe, peft_model, run_dir: Path, info: dict, log) -> None:
    meta = {
        "base_fingerprint": info["base_fingerprint"], "training_steps": info["steps"],
        "recipe_hash": info["recipe_hash"], "trigger_words": info["trigger_words"], "languages": info["languages"],
        "dataset_summary": info["dataset_summary"], "base_name": info["base"], "variant": info["variant"],
    }  # fmt: skip
    for fmt in recipe.export.formats:
        base = recipe.model.checkpoint if fmt.startswith("merged") else None
        out = export_adapter(peft_model, fmt, run_dir / "export" / fmt, base=base, dtype=recipe.export.dtype,
                             metadata=meta)
        log(f"exported {fmt}: {out}")
