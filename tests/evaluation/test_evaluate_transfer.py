"""Transfer to the distilled model (issue 20, item 7): the gap per strength and the recommended strength."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from adapter_helpers import base_model, trained

from hhtune.adapters.formats.peft import from_peft_model, write_peft
from hhtune.encoders import EncoderPaths
from hhtune.evaluation.sampling import Decoders, Sample, SampleSettings, sample_variant, with_adapter
from hhtune.evaluation.transfer import latent_gap, measure_transfer, recommend_strength

SETTINGS = SampleSettings(seconds=0.2, base_resolution=32)
# latents only: never loaded
NO_ENCODERS = EncoderPaths(video_vae=Path("-"), audio_vae=Path("-"), text_encoder=Path("-"))


def _adapter(tmp_path: Path, zero: bool) -> Path:
    model = trained()
    if zero:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.zero_()
    return write_peft(from_peft_model(model), tmp_path / ("zero" if zero else "real"), torch.float32)


def _transfer(adapter: Path, strengths=(0.5, 1.0)):
    models = {"base": base_model(0), "distilled": base_model(1)}  # two tiny inits: a gap exists without adapter
    g = torch.Generator().manual_seed(5)
    feats = [(torch.randn(1, 4, 32, generator=g), 4)]
    negative = (torch.randn(1, 3, 32, generator=g), 3)

    def sample(model, sampler, strength):
        kw = dict(decoders=Decoders(NO_ENCODERS), settings=SETTINGS, sampler=sampler, negative=negative, decode=False)
        if strength is None:
            return sample_variant(models[model], model, feats, (0,), **kw)
        with with_adapter(models[model], adapter, strength, check_base=False) as m:
            return sample_variant(m, model, feats, (0,), **kw)

    return measure_transfer(sample, strengths)


def test_an_adapter_with_zero_effect_has_the_no_adapter_gap(tmp_path):
    zero = _transfer(_adapter(tmp_path, zero=True))
    assert zero.no_adapter_gap > 0.01  # the two tiny models really differ
    for s, gap in zero.gaps.items():
        assert gap == pytest.approx(zero.no_adapter_gap, rel=1e-6, abs=1e-9), s
    real = _transfer(_adapter(tmp_path, zero=False))
    assert real.no_adapter_gap == pytest.approx(zero.no_adapter_gap, rel=1e-9)  # same models, same seeds
    assert all(abs(g - real.no_adapter_gap) > 1e-4 for g in real.gaps.values())  # a real adapter moves the gap
    assert real.gaps[0.5] != pytest.approx(real.gaps[1.0], rel=1e-6)  # and the strength matters


def test_with_adapter_leaves_the_model_as_it_was(tmp_path):
    model = base_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with with_adapter(model, _adapter(tmp_path, zero=False), 0.5) as m:
        assert any("lora_A" in n for n, _ in m.named_parameters())
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def _fake(gap: float, variant: str = "x") -> list[Sample]:
    return [Sample(variant, 0, 0, torch.full((1, 4), 1.0 + gap), torch.full((1, 2), 1.0 + gap))]


def test_constructed_case_recommends_the_known_best_strength():
    # gap to the reference shrinks toward 0.75, but 0.75 garbles the voice: 1.0 is the known best
    gaps = {0.25: 0.5, 0.5: 0.3, 0.75: 0.1, 1.0: 0.2, 1.25: 0.25}
    quality = {0.25: {"voice_similarity": 0.90, "speech_quality": 3.0},
               0.5: {"voice_similarity": 0.90, "speech_quality": 3.1},
               0.75: {"voice_similarity": 0.50, "speech_quality": 3.1},
               1.0: {"voice_similarity": 0.88, "speech_quality": 3.0},
               1.25: {"voice_similarity": 0.89, "speech_quality": 2.0}}  # fmt: skip
    assert recommend_strength(gaps, quality, tolerance=0.1) == 1.0
    assert recommend_strength(gaps, {}, tolerance=0.1) == 0.75  # nothing measured: the smallest gap
    quality[1.0]["lip_sync"] = None  # a metric not measured does not constrain
    assert recommend_strength(gaps, quality, tolerance=0.1) == 1.0

    def sample(model, sampler, strength):  # monkeypatched sampling: the gap to the reference is what we set
        if sampler == "base":
            return _fake(0.0)
        return _fake(0.05, "none") if strength is None else _fake(gaps[strength], str(strength))

    result = measure_transfer(sample, list(gaps), quality=lambda s: quality[float(s[0].variant)], tolerance=0.1)
    assert result.recommended_strength == 1.0
    assert result.gaps == pytest.approx(gaps) and result.no_adapter_gap == pytest.approx(0.05)


def test_latent_gap_pairs_samples_by_prompt_and_seed():
    a = [Sample("a", 0, 1, torch.ones(3), torch.ones(2)), Sample("a", 0, 2, torch.zeros(3), torch.zeros(2))]
    shifted = [Sample("b", 0, 1, 3 * torch.ones(3), 3 * torch.ones(2))]
    assert latent_gap(a, list(reversed(a))) == 0.0  # paired by (prompt, seed), not by position
    assert latent_gap(a[:1], shifted) == pytest.approx(2 / 3)  # |1 - 3| / |3|
    with pytest.raises(ValueError, match="no reference sample"):
        latent_gap(a, shifted)
