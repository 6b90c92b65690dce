"""Writes ``fixtures/tied_reference.json``: the objective's numbers and a short run's logged losses, as computed
by the code before ``loss.audio_sigma`` and ``loss.balance`` existed (commit 61fee3d).

    python tests/training/_tied_reference.py  # from the repository root; only to renew the reference on purpose

``test_modality_loss.py`` checks that the defaults (``audio_sigma: tied``, ``balance: none``) still give these
numbers bit for bit. Only API that predates both settings is used here, so the script runs on either side.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _runs import _recipe  # noqa: E402

from hhtune.recipe import LossSection, validate_recipe  # noqa: E402
from hhtune.training import TrainingDataset, flow_matching_loss, train  # noqa: E402
from hhtune.training.synthetic import write_synthetic_dataset  # noqa: E402

#: Loss settings whose numbers are pinned: the defaults, and every other knob of the objective turned.
CONFIGS = {
    "defaults": {},
    "weighted": {"video_weight": 1.5, "audio_weight": 0.3, "speech_weight": 2.0, "i2v_probability": 0.5,
                 "sigma_distribution": "logit_normal", "logit_normal_mean": 0.2, "logit_normal_std": 0.8,
                 "shift": 3.0},
}
RUN = {"data": {"batch_size": 2}, "train": {"max_steps": 3, "gradient_accumulation_steps": 2},
       "loss": {"caption_dropout": 0.3, "i2v_probability": 0.5},  # every draw of the sample generator counts
       "validation": {"at_end": False}, "export": {"formats": []}}


class Affine(torch.nn.Module):
    """A model whose predictions depend on what it is fed (caption dropout included), through elementwise
    operations only."""

    def forward(self, video, audio, text, *, text_lengths, audio_lengths):  # noqa: ARG002 -- the model's signature
        told = 0.01 * text_lengths.float()
        return 0.5 * video + 0.1 + told.view(-1, 1, 1, 1, 1), -0.25 * audio + 0.05 - told.view(-1, 1, 1)


def objective_numbers(dataset: Path) -> dict:
    data = TrainingDataset(dataset)
    out = {}
    for name, cfg in CONFIGS.items():
        rows = []
        for index, group in enumerate(data.groups.values()):
            for batch_index in (index, index + 7, index + 20, index + 33):
                r = flow_matching_loss(Affine(), data.collate(group[:2], batch_index), LossSection(**cfg), seed=5,
                                       caption_dropout=0.3)
                rows.append({"loss": float(r.loss), "video_loss": float(r.video_loss),
                             "audio_loss": float(r.audio_loss), "sigmas": r.sigmas.tolist(),
                             "per_sample": r.per_sample.tolist()})
        out[name] = rows
    return out


def run_numbers(dataset: Path, out: Path) -> list[dict]:
    run = train(validate_recipe(_recipe(dataset, out, **RUN)), log=lambda *_: None)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "grad_norm"} for r in records]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_synthetic_dataset(Path(tmp) / "ds", clips=4, buckets=2, with_reference=True)
        ref = {"objective": objective_numbers(dataset), "run": run_numbers(dataset, Path(tmp) / "run")}
    (Path(__file__).parent / "fixtures" / "tied_reference.json").write_text(json.dumps(ref, indent=1) + "\n")


if __name__ == "__main__":
    main()
