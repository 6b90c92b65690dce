"""LoRA adapters on the HappyHorse transformer: what to adapt, the layers, training, files and loading.

Laid out as PEFT's tuners (config / layer / model), each module importing only those above it:

* :mod:`.settings` - :class:`LoraSettings` (the recipe's ``lora`` section) and the modules they select;
* :mod:`.experts` - the PEFT LoRA layer for the sandwich layers' stacked modality experts;
* :mod:`.inject` - :func:`add_lora` (a trainable adapter for training) and parameter counts;
* :mod:`.base_identity` - :func:`base_model_id`, which base weights an adapter belongs to;
* :mod:`.formats` - adapter files (PEFT, Wan2GP, ComfyUI, kohya / musubi-tuner) through one in-memory form;
* :mod:`.provenance` - a run's adapter or checkpoint read with what its ``run_info.json`` records (base fingerprint);
* :mod:`.apply` - :func:`load`: an adapter file applied to a model at inference, at a strength, on its own base.

Nothing here imports :mod:`hhtune.export` (the export job, built on this package).
"""

from __future__ import annotations

from .apply import AdapterSpec, check_compatible, load, parse_spec
from .formats.weights import AdapterError

__all__ = ["AdapterError", "AdapterSpec", "check_compatible", "load", "parse_spec"]
