"""The super-resolution DiT models: variants, v1 coordinates and local attention against the official code.

``official_forward_tiny_sr.safetensors`` (written by ``make_official_sr_fixture.py``) holds the official
``DiTModel`` forward on a tiny config with 7 local layers of 8, its v1 packing, and the official
``calc_local_qk_range`` ranges of a few shapes (the 1080p one included).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hhtune.model import HappyHorseTransformer, ModelConfig, pack_sample, unpack_sample
from hhtune.model.attention import AttentionPlan, LocalWindow, attend, local_qk_ranges
from hhtune.model.packing import padded_audio_coords, padded_text_coords

FIXTURE = Path(__file__).parents[1] / "fixtures" / "official_forward_tiny_sr.safetensors"

# The official SR2_1080 override (inference/common/config.py, post_override_config), as published.
OFFICIAL_1080P_LOCAL = [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18, 20, 21, 22, 24, 25, 26, 28, 29, 30,
                        32, 33, 34, 35, 36, 37, 38, 39]  # fmt: skip


@pytest.fixture(scope="module")
def official_sr() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE)


@pytest.fixture(scope="module")
def meta() -> dict[str, str]:
    with safe_open(FIXTURE, "pt") as f:
        return f.metadata()


def _sr_model(official_sr, meta, **update) -> HappyHorseTransformer:
    window = int(meta["frame_receptive_field"])
    config = ModelConfig(**json.loads(meta["arch"]), coords_style="v1", frame_receptive_field=window)
    config = config.model_copy(update=update)
    model = HappyHorseTransformer(config)
    model.load_state_dict({k[len("weights."):]: v for k, v in official_sr.items() if k.startswith("weights.")})
    model.set_compute_dtype("bf16")
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_variants_apply_the_official_sr_settings():
    sr1080 = ModelConfig.preset("15b", "sr_1080p")
    assert sr1080.local_attn_layers == OFFICIAL_1080P_LOCAL and len(OFFICIAL_1080P_LOCAL) == 32
    assert (sr1080.coords_style, sr1080.frame_receptive_field) == ("v1", 11)
    assert sr1080.sr_variant == "sr_1080p"
    sr540 = ModelConfig.preset("15b", "sr_540p")
    assert (sr540.local_attn_layers, sr540.coords_style, sr540.sr_variant) == ([], "v1", "sr_540p")
    for first in ("base", "distill"):
        assert ModelConfig.preset("15b", first) == ModelConfig.preset("15b")
        assert ModelConfig.preset("15b", first).sr_variant is None
    tiny = ModelConfig.preset("tiny", "sr_1080p")
    assert set(tiny.local_attn_layers) - set(tiny.mm_layers) and set(range(8)) - set(tiny.local_attn_layers)
    assert sr1080.with_variant("base") == ModelConfig.preset("15b")
    with pytest.raises(ValueError, match="allowed: base, distill, sr_540p, sr_1080p"):
        ModelConfig.preset("tiny", "sr_720p")


def test_official_sr_config_dict_loads():
    official = {**ModelConfig.preset("15b").model_dump(), "local_attn_layers": OFFICIAL_1080P_LOCAL,
                "params_dtype": "torch.float32", "num_heads_q": 40}  # fmt: skip
    assert ModelConfig(**official).local_attn_layers == OFFICIAL_1080P_LOCAL
    with pytest.raises(ValueError, match="local_attn_layers has layer indices"):
        ModelConfig(**{**official, "local_attn_layers": [40]})


def test_v1_packing_matches_the_official_sr_data_proxy(official_sr):
    x, coords, modality = pack_sample(official_sr["inputs.video_latent"], official_sr["inputs.audio_latent"],
                                      official_sr["inputs.text_feat"], coords_style="v1")  # fmt: skip
    assert torch.equal(x, official_sr["packed.x"]) and torch.equal(modality, official_sr["packed.modality"])
    assert torch.equal(coords, official_sr["packed.coords"])
    v2 = pack_sample(official_sr["inputs.video_latent"], official_sr["inputs.audio_latent"],
                     official_sr["inputs.text_feat"])[1]  # fmt: skip
    assert not torch.equal(v2, coords)  # the text rows differ between the styles
    # audio not 4(T-1)+1 long: v1 takes the video's T as its reference, and padded rows agree
    odd = official_sr["packed_odd.coords"]
    video, audio, text = (official_sr[f"inputs.{n}"] for n in ("video_latent", "audio_latent", "text_feat"))
    assert torch.equal(pack_sample(video, audio[:18], text[:3], coords_style="v1")[1], odd)
    nv = odd.shape[0] - 21
    lengths = torch.tensor([18, 25])
    assert torch.equal(padded_audio_coords(lengths, 25, "v1", video.shape[1])[0, :18], odd[nv:nv + 18])
    assert torch.equal(padded_text_coords(torch.tensor([3, 5]), 5, "v1")[0, :3], odd[nv + 18:])


def test_v1_refuses_a_single_text_token():
    with pytest.raises(ValueError, match="at least 2 text tokens"):
        pack_sample(torch.zeros(48, 1, 2, 2), torch.zeros(1, 64), torch.zeros(1, 32), coords_style="v1")


def test_local_ranges_match_the_official_calc_local_qk_range(official_sr, meta):
    for i, (nv, nat, frames, frf) in enumerate(json.loads(meta["range_cases"])):
        q, k = local_qk_ranges(LocalWindow(nv, nv // frames, frf, nv + nat))
        assert torch.equal(q, official_sr[f"ranges.{i}.q"]), i
        assert torch.equal(k, official_sr[f"ranges.{i}.k"]), i


@torch.no_grad()
@pytest.mark.parametrize("backend", ["auto", "flex"])
def test_local_layers_match_the_official_forward(official_sr, meta, backend):
    model = _sr_model(official_sr, meta)
    model.set_attention_backend(backend)
    args = (official_sr["packed.x"], official_sr["packed.coords"], official_sr["packed.modality"])
    ref = official_sr["outputs.packed"]
    assert _rel(model.forward_packed(*args), ref) <= 1e-3
    # the window matters: the same weights with every layer global are far off
    assert _rel(_sr_model(official_sr, meta, local_attn_layers=[]).forward_packed(*args), ref) > 5e-3


@torch.no_grad()
def test_batched_forward_matches_the_official_depacked_output(official_sr, meta):
    model = _sr_model(official_sr, meta)
    video, audio = model(official_sr["inputs.video_latent"][None], official_sr["inputs.audio_latent"][None],
                         official_sr["inputs.text_feat"][None])  # fmt: skip
    ref_v, ref_a = official_sr["outputs.video_velocity"], official_sr["outputs.audio_velocity"]
    assert _rel(video[0], ref_v) <= 1e-3 and _rel(audio[0], ref_a) <= 2e-3
    ref_v2, ref_a2 = unpack_sample(official_sr["outputs.packed"], tuple(ref_v.shape[1:]), ref_a.shape[0])
    assert torch.equal(ref_v2, ref_v) and torch.equal(ref_a2, ref_a)


@torch.no_grad()
def test_a_ragged_batch_matches_each_sample_alone(official_sr, meta):
    """Padded audio/text rows: the local layers see each row's real keys only (SDPA chunks and Flex alike)."""
    model = _sr_model(official_sr, meta)
    model.set_compute_dtype("fp32")  # exact enough that a leak across padding shows
    v, a, t = (official_sr[f"inputs.{n}"] for n in ("video_latent", "audio_latent", "text_feat"))
    video = torch.stack([v, v.flip(1)])
    audio = torch.stack([a, a.roll(3, 0)])
    text = torch.stack([t, t.flip(0)])
    lengths = dict(audio_lengths=torch.tensor([25, 17]), text_lengths=torch.tensor([5, 3]))
    alone = [model(video[1:], audio[1:, :17], text[1:, :3]), model(video[:1], audio[:1], text[:1])]
    for backend in ("auto", "flex"):
        model.set_attention_backend(backend)
        out_v, out_a = model(video, audio, text, **lengths)
        assert _rel(out_v[1], alone[0][0][0]) < 1e-5 and _rel(out_a[1, :17], alone[0][1][0]) < 1e-5
        assert _rel(out_v[0], alone[1][0][0]) < 1e-5


def _dense_reference(q, k, v, window: LocalWindow) -> torch.Tensor:
    """Brute force: the token mask of the official ranges, one softmax over the union."""
    q_r, k_r = local_qk_ranges(window)
    mask = torch.zeros(window.length, window.length, dtype=torch.bool)
    for (qs, qe), (ks, ke) in zip(q_r.tolist(), k_r.tolist()):
        mask[qs:qe, ks:ke] = True
    return attend(q, k, v, AttentionPlan("sdpa", mask=mask))


@pytest.mark.parametrize("block", [16, 128])
def test_flex_block_mask_is_built_from_the_ranges_exactly(block):
    from torch.nn.attention.flex_attention import create_block_mask

    from hhtune.model.attention import local_block_mask

    window = LocalWindow(num_video=9 * 20, tokens_per_frame=20, frame_receptive_field=2, length=9 * 20 + 37)
    got = local_block_mask(window, torch.device("cpu"), block=block)
    q_r, k_r = local_qk_ranges(window)

    def official(b, h, q, k):
        inside = torch.zeros_like(q, dtype=torch.bool)
        for (qs, qe), (ks, ke) in zip(q_r.tolist(), k_r.tolist()):
            inside = inside | ((q >= qs) & (q < qe) & (k >= ks) & (k < ke))
        return inside

    ref = create_block_mask(official, 1, None, window.length, window.length, device="cpu", BLOCK_SIZE=block)
    assert torch.equal(got.to_dense(), ref.to_dense())
    assert torch.equal(got.full_kv_num_blocks, ref.full_kv_num_blocks)
    assert torch.equal(got.kv_num_blocks, ref.kv_num_blocks)


def test_local_kernels_match_brute_force_masked_attention():
    gen = torch.Generator().manual_seed(0)
    window = LocalWindow(num_video=6 * 8, tokens_per_frame=8, frame_receptive_field=1, length=6 * 8 + 11)
    q, k, v = (torch.randn(1, window.length, h, 16, generator=gen) for h in (4, 2, 2))
    ref = _dense_reference(q, k, v, window)
    assert torch.allclose(attend(q, k, v, AttentionPlan("sdpa", window=window)), ref, atol=1e-5)
    from hhtune.model.attention import local_block_mask

    flex = AttentionPlan("flex", block_mask=local_block_mask(window, torch.device("cpu"), block=16), window=window)
    assert torch.allclose(attend(q, k, v, flex), ref, atol=1e-5)


def test_the_cpu_local_path_never_forms_a_dense_mask(monkeypatch):
    """Every SDPA call of the frame-by-frame path is at most one frame's queries by its window plus audio+text
    (or the audio+text queries by all keys), never ``[L, L]``."""
    import hhtune.model.attention as attention

    window = LocalWindow(num_video=12 * 30, tokens_per_frame=30, frame_receptive_field=2, length=12 * 30 + 20)
    seen = []
    real = attention.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.shape[-2], k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    q = torch.randn(1, window.length, 2, 8)
    attend(q, q, q, AttentionPlan("sdpa", window=window))
    assert len(seen) == 12 + 1
    assert all(m is None for *_, m in seen)
    video_calls = seen[:12]
    assert max(lq * lk for lq, lk, _ in video_calls) == 30 * (5 * 30 + 20)


def test_a_local_layer_without_its_window_is_refused():
    model = HappyHorseTransformer(ModelConfig.preset("tiny", "sr_1080p"))
    video, audio, text = torch.zeros(1, 4, 192), torch.zeros(1, 5, 64), torch.zeros(1, 3, 32)
    coords = torch.cat([pack_sample(torch.zeros(48, 1, 4, 4), torch.zeros(5, 64), torch.zeros(3, 32), "v1")[1]])
    with pytest.raises(ValueError, match="local window"):
        model.forward_tokens(video, audio, text, coords[None])
    with pytest.raises(ValueError, match="one sample per forward_packed"):
        x, c, m = pack_sample(torch.zeros(48, 1, 4, 4), torch.zeros(5, 64), torch.zeros(3, 32), "v1")
        model.forward_packed(torch.cat([x, x]), torch.cat([c, c]), torch.cat([m, m]), sample_lengths=[12, 12])


def test_the_benchmark_compares_equal_outputs():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from local_attention import main_args, run

    result = run(main_args(["--frames", "6", "--tokens-per-frame", "4", "--frame-receptive-field", "1",
                            "--audio", "5", "--text", "3", "--heads", "2", "--kv-heads", "1", "--repeats", "1"]))
    assert result["max_abs_diff"] < 1e-5 and result["keys_seen_fraction"] < 0.8 and result["dense_over_local"] > 0
