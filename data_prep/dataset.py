"""Stage 9: the Hugging Face dataset (Arrow, ``save_to_disk``) and its manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file

from hhtune.encoders import EncoderPaths, encoders_fingerprint
from hhtune.io import atomic_dir, atomic_write_text

from .align import Alignment
from .config import DataConfig
from .textgrid import write_textgrid

FORMAT_VERSION = 1
LATENTS = ("video_latents", "audio_latents", "text_embeds", "reference_latents")


def write_dataset(units: list[dict], out: Path, cfg: DataConfig, encoders: EncoderPaths | None) -> Path:
    """Write ``dataset/`` (one row per clip), ``alignments/`` and ``manifest.json``, each atomically."""
    import datasets

    clips = [c for u in units for c in u["clips"]]
    rows = []
    for c in clips:
        row = {k: v for k, v in c.items() if k != "speaker"}
        row["speaker"] = c.get("speaker", "")
        if encoders is not None:
            lat = load_file(out / ".work" / "latents" / f"{c['clip_id']}.safetensors")
            row.update({k: lat[k].numpy() for k in LATENTS})
        rows.append(row)
    with atomic_dir(out / "alignments") as tmp:
        for c in clips:
            (tmp / f"{c['clip_id']}.json").write_text(c["alignment"])
            write_textgrid(Alignment.from_json(c["alignment"]), c["num_frames"] / 25, tmp / f"{c['clip_id']}.TextGrid")
    with atomic_dir(out / "dataset") as tmp:
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"clip_id": []})
        ds.save_to_disk(str(tmp))
    enc = {k: str(v) for k, v in encoders.model_dump().items()} if encoders is not None else {}
    enc_fp = encoders_fingerprint(encoders) if encoders is not None else None
    fingerprint = hashlib.sha256(json.dumps([cfg.fingerprint(), enc_fp]).encode()).hexdigest()[:16]
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "encoders": enc,
                "encoders_fingerprint": enc_fp, "settings": cfg.model_dump(mode="json"), "encoded": encoders is not None,
                "clips": len(rows)}  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return out / "dataset"
