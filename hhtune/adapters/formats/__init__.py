"""Adapter file formats, all converted through one in-memory form: module path -> (A, B, alpha).

| format | keys | scale | loads in (checked against the loader's code) |
| --- | --- | --- | --- |
| ``peft`` | folder: ``adapter_config.json`` + ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``; sandwich experts ``.lora_B_<expert>.weight``) | PEFT's ``lora_alpha`` / ``r`` | hhtune, PEFT |
| ``wan2gp`` | ``<path>.lora_A.weight`` ``[r, in]``, ``.lora_B.weight`` ``[out, r]``, ``.alpha`` | B pre-scaled, ``alpha = r`` | Wan2GP (``models/magi_human`` + mmgp) |
| ``kohya`` | ``lora_unet_<path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` | B pre-scaled, ``alpha = r`` | musubi-tuner ``magi-human`` (shared expert updates only) |
| ``comfyui`` | ``diffusion_model.<path>.lora_A.weight``, ``.lora_B.weight``, ``.alpha`` | B pre-scaled, ``alpha = r`` | ComfyUI's generic key map; ComfyUI core does not run MagiHuman yet |

Merged checkpoints (written by :mod:`hhtune.export`) are the path to the ComfyUI MagiHuman node
packs and FastVideo, which apply no LoRA to MagiHuman.

The modules, each importing only those above it:

* :mod:`.weights` - the in-memory form (``LoraWeights``, ``AdapterMetadata``, ``AdapterError``);
* :mod:`.fitting` - a model's or checkpoint's module shapes, and :func:`~.fitting.fit` to them;
* :mod:`.modelspec` - header metadata: hhtune's own, and the ModelSpec / ``ss_*`` keys;
* :mod:`.peft` and :mod:`.single` - one format family each, reading and writing;
* :mod:`.read` - :func:`~.read.read_adapter`, any format, told apart by what the path holds.
"""  # noqa: E501 -- a Markdown table: one row per line
