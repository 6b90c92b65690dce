"""What a safetensors header says about an adapter: hhtune's metadata, and the ModelSpec / ``ss_*`` keys
other tools read.

ModelSpec (``modelspec.*``) is the header convention kohya's sd-scripts, musubi-tuner,
ComfyUI and Civitai tooling display; ``modelspec.architecture`` uses musubi-tuner's id for
this model (``daVinci-MagiHuman``, ``/lora`` for adapters) so its tools recognise the file.
The ``ss_*`` keys are sd-scripts' training keys (rank, alpha, module, steps, base).
An adapter trained on a preset's random weights (``base_name`` is a preset, not a checkpoint) says so in
``ss_base_model_version`` and ``modelspec.description``: it is a test artifact, not an adapter of the released model
(a merged file describes the checkpoint it was merged into, so it keeps the plain architecture).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from safetensors import safe_open

from ...contract import PRESETS
from .weights import METADATA_KEY, AdapterError, AdapterMetadata, LoraWeights

ARCHITECTURE = "daVinci-MagiHuman"
IMPLEMENTATION = "https://github.com/GAIR-NLP/daVinci-MagiHuman"


def modelspec_header(w: LoraWeights, *, merged: bool = False, folded: bool = False) -> dict[str, str]:
    """hhtune's own header plus the ModelSpec and ``ss_*`` keys for ``w``.

    ``folded``: the file holds ``B`` pre-scaled with ``alpha = r``, so ``ss_network_alpha`` is the rank.
    """
    meta = w.described()
    title = meta.title or (f"HappyHorse LoRA ({', '.join(meta.trigger_words)})" if meta.trigger_words
                           else "HappyHorse LoRA")
    header = {
        "format": "pt",
        METADATA_KEY: meta.model_dump_json(),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE if merged else f"{ARCHITECTURE}/lora",
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.date": _dt.date.today().isoformat(),
        "modelspec.prediction_type": "flow",
        "modelspec.tags": ",".join(["lora", "video", "audio", *meta.languages]),
        "ss_network_module": "hhtune.lora",
        "ss_base_model_version": ARCHITECTURE,
    }
    if meta.base_name in PRESETS and not merged:  # trained on no checkpoint: the preset's random initialisation
        header["ss_base_model_version"] = f"{ARCHITECTURE} layout, random weights ({meta.base_name} preset)"
        header["modelspec.description"] = (
            f"trained on randomly initialised weights of the {meta.base_name} preset: "
            f"a test adapter, not for the released {ARCHITECTURE} checkpoints")
    if meta.trigger_words:
        header["modelspec.trigger_phrase"] = ", ".join(meta.trigger_words)
        header["ss_tag_frequency"] = json.dumps({"trigger": {t: 1 for t in meta.trigger_words}})
    if meta.resolution:
        header["modelspec.resolution"] = meta.resolution
    if meta.license:
        header["modelspec.license"] = meta.license
    if meta.recommended_strength is not None:
        header["modelspec.usage_hint"] = usage_hint(meta.recommended_strength)
    if meta.rank is not None:
        header["ss_network_dim"] = str(meta.rank)
    if folded and meta.rank is not None:
        header["ss_network_alpha"] = str(float(meta.rank))
    elif meta.alpha is not None and not folded:
        header["ss_network_alpha"] = str(meta.alpha)
    if meta.training_steps is not None:
        header["ss_steps"] = str(meta.training_steps)
    if meta.base_name:
        header["ss_sd_model_name"] = meta.base_name
    if meta.dataset_summary.get("clips") is not None:
        header["ss_num_train_items"] = str(meta.dataset_summary["clips"])
    return header


def usage_hint(strength: float) -> str:
    """The ``modelspec.usage_hint`` text for a recommended strength."""
    return f"strength {strength:g} on the distilled model (8 steps), as measured by python -m hhtune.evaluate"


def check_architecture(header: dict[str, str], source: str) -> None:
    """Refuse a file whose ModelSpec says it belongs to another model."""
    arch = header.get("modelspec.architecture")
    if arch and not arch.split("/")[0].lower().replace("-", "").endswith(("magihuman", "happyhorse")):
        raise AdapterError(
            f"{source}: modelspec.architecture is {arch!r}: a LoRA for another model cannot be applied to "
            f"HappyHorse ({ARCHITECTURE})"
        )


def read_metadata(path: Path, default: AdapterMetadata) -> AdapterMetadata:
    """The hhtune metadata in a safetensors file's header (``default`` when it has none)."""
    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if not raw:
        return default
    try:
        return AdapterMetadata.model_validate_json(raw)
    except ValueError as e:  # pydantic's ValidationError: report the header as unreadable
        raise AdapterError(f"{path}: unreadable hhtune metadata ({e})") from e
