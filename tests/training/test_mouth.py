"""The mouth-weighted video loss: the weights per latent cell as worked out by hand, the loss they give, frames
without a face at weight 1, older datasets that still load, and the message when the dataset has no mouth boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _runs import _recipe

from hhtune.cli import exit_code
from hhtune.contract import MANIFEST, NO_MOUTH
from hhtune.model import HappyHorseTransformer
from hhtune.recipe import LossSection, validate_recipe
from hhtune.training import LoraTrainer, RecipeConflict, TrainingDataset
from hhtune.training.data import Batch
from hhtune.training.mouth import mouth_cell_weights
from hhtune.training.objective import flow_matching_loss
from hhtune.training.synthetic import write_synthetic_dataset

# Three latent frames (9 video frames) on a 3 x 4 latent grid: a box, another box, no face.
BOXES = torch.tensor([[[0, 0, 2, 1], [1, 1, 4, 3], list(NO_MOUTH)]])
# Speech: video frame 0 half, frames 1-4 (latent frame 1) fully, frames 5-8 (latent frame 2) not at all.
SPEECH = torch.tensor([[0.5, 1, 1, 0, 0, 0, 0, 0, 0]])
# Weight 3: cells inside the box weigh 3 ("always"); "spoken" scales the extra 2 by the frame's speech.
ALWAYS = [[[3, 3, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
          [[1, 1, 1, 1], [1, 3, 3, 3], [1, 3, 3, 3]],
          [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]]  # fmt: skip
SPOKEN = [[[2, 2, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
          [[1, 1, 1, 1], [1, 3, 3, 3], [1, 3, 3, 3]],
          [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]]  # fmt: skip


@pytest.mark.parametrize("on,expected", [("always", ALWAYS), ("spoken", SPOKEN)])
def test_cell_weights_are_the_hand_computed_ones(on, expected):
    weights = mouth_cell_weights(BOXES, SPEECH, (3, 4), 3.0, on)
    assert weights.tolist() == [expected]


class _Zero(torch.nn.Module):
    """Predicts zero velocity and keeps what it was given, so the test can rebuild the target by hand."""

    def forward(self, x_v, x_a, *_, **__):
        self.x_v = x_v.clone()
        return torch.zeros_like(x_v), torch.zeros_like(x_a)


def _batch(boxes: torch.Tensor | None) -> Batch:
    g = torch.Generator().manual_seed(0)
    speech = torch.zeros(1, 9)
    speech[0, :5] = SPEECH[0, :5]
    return Batch(video=torch.randn(1, 48, 3, 3, 4, generator=g), audio=torch.randn(1, 9, 64, generator=g),
                 audio_lengths=torch.tensor([9]), text=torch.randn(1, 4, 32, generator=g),
                 text_lengths=torch.tensor([4]), speech_mask=speech, reference=None,
                 has_reference=torch.tensor([False]), index=0, mouth_boxes=boxes)  # fmt: skip


@pytest.mark.parametrize("speech_weight", [1.0, 2.0])
def test_the_video_loss_is_the_cell_weighted_mean_worked_out_by_hand(speech_weight):
    model, batch = _Zero(), _batch(BOXES)
    cfg = LossSection(mouth_weight=3.0, mouth_weight_on="spoken", speech_weight=speech_weight)
    out = flow_matching_loss(model, batch, cfg, seed=3, caption_dropout=0.0)
    s = out.sigmas.view(-1, 1, 1, 1, 1)
    noise = (model.x_v - (1 - s) * batch.video) / s
    error = (noise - batch.video).square().mean(dim=1)[0].double().numpy()  # [T, H, W]: the prediction is 0
    frame = np.array([1 + (speech_weight - 1) * 0.5, speech_weight, 1.0])  # speech_weight on spoken frames
    weights = frame[:, None, None] * np.array(SPOKEN)
    assert float(out.video_loss) == pytest.approx((weights * error).sum() / weights.sum(), rel=1e-5)
    plain = flow_matching_loss(model, batch, LossSection(speech_weight=speech_weight), seed=3, caption_dropout=0.0)
    assert float(plain.video_loss) == pytest.approx((frame[:, None, None] * error).sum() / frame.sum() / 12, rel=1e-5)
    assert float(out.audio_loss) == float(plain.audio_loss)  # the audio loss is left alone


def test_frames_without_a_face_weigh_one():
    none = torch.tensor([[list(NO_MOUTH)] * 3])
    assert (mouth_cell_weights(none, torch.ones(1, 9), (3, 4), 5.0, "always") == 1).all()
    cfg = LossSection(mouth_weight=5.0, mouth_weight_on="always")
    weighted = flow_matching_loss(_Zero(), _batch(none), cfg, seed=3, caption_dropout=0.0)
    plain = flow_matching_loss(_Zero(), _batch(none), LossSection(), seed=3, caption_dropout=0.0)
    assert float(weighted.loss) == pytest.approx(float(plain.loss), rel=1e-6)


def test_the_dataset_column_reaches_the_batch(tmp_path):
    data = TrainingDataset(write_synthetic_dataset(tmp_path / "d", clips=2, frames=9, mouth_boxes=True))
    batch = data.collate([0, 1], 0)
    assert data.has_mouth_boxes and batch.mouth_boxes.dtype == torch.int64
    assert batch.mouth_boxes.tolist() == [[[1, 1, 3, 3], [1, 1, 3, 3], list(NO_MOUTH)]] * 2  # 4x4 grid, 3 frames


def test_a_format_1_dataset_still_loads_without_mouth_boxes(tmp_path):
    path = write_synthetic_dataset(tmp_path / "v1", clips=2)
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    data = TrainingDataset(path)
    assert not data.has_mouth_boxes and data.collate([0, 1], 0).mouth_boxes is None


def _must_not_load(*_: object, **__: object) -> None:
    pytest.fail("the model loaded before the dataset was checked")


def test_mouth_weight_without_mouth_boxes_stops_before_the_model_loads_and_names_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(HappyHorseTransformer, "__init__", _must_not_load)
    data = write_synthetic_dataset(tmp_path / "ds", clips=1)
    recipe = validate_recipe(_recipe(data, tmp_path / "run", loss={"mouth_weight": 3.0}))
    with pytest.raises(RecipeConflict, match=r"loss.mouth_weight is 3 but .* no mouth_boxes column .*"
                                             r"`mouth_regions: true` in the data config") as e:  # fmt: skip
        LoraTrainer(recipe, log=lambda *_: None).setup()
    assert exit_code(e.value) == 2 and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="mouth_regions: true"):  # the objective refuses too, whoever calls it
        flow_matching_loss(_Zero(), _batch(None), LossSection(mouth_weight=2.0), seed=0, caption_dropout=0.0)
