"""Write ``tests/fixtures/official_forward_tiny_sr.safetensors``: the official DiT on a tiny SR config.

Not a test: run by hand when the official code changes, with the official checkout's ``inference/`` folder
and its pure-Python dependencies (``einops``, ``unfoldNd``, ``pydantic-settings``) on ``PYTHONPATH``::

    git --git-dir=PATH/daVinci-MagiHuman.git archive HEAD inference | tar x -C /tmp/official
    pip install --no-deps --target /tmp/official/deps einops unfoldNd pydantic-settings python-dotenv
    PYTHONPATH=/tmp/official:/tmp/official/deps python tests/model/make_official_sr_fixture.py

The official ``DiTModel`` runs as it is, except for the two attention kernels that need CUDA:

* the global layers' ``flash_attn_with_cp`` becomes exact softmax attention on the same bf16 q, k, v;
* the local layers' ``flex_flash_attn_with_cp`` (magi_attention) becomes brute-force attention under the
  mask that the official ``calc_local_qk_range`` q/k ranges describe (a query sees the union of the key
  ranges of every range pair that holds it; their ``_flash_attn_with_correction`` fallback computes the same).

Packing uses the official ``SingleData`` with ``coords_style="v1"`` (the SR data proxy). The fixture also
holds the official q/k ranges of a few shapes, including the 1080p one, for the range tests.
"""

from __future__ import annotations

import contextlib
import json
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).parents[1] / "fixtures" / "official_forward_tiny_sr.safetensors"
ARCH = dict(num_layers=8, hidden_size=64, head_dim=16, num_query_groups=2, video_in_channels=192,
            audio_in_channels=64, text_in_channels=32, mm_layers=[0, 1, 6, 7], gelu7_layers=[0, 1],
            local_attn_layers=[0, 1, 2, 4, 5, 6, 7])  # fmt: skip
FRAME_RECEPTIVE_FIELD = 2  # small enough that 7 latent frames see a real window
LATENT = (7, 4, 6)  # T, H, W
NUM_AUDIO, NUM_TEXT, SEED = 25, 5, 1234
ODD = (18, 3)  # audio and text lengths of a second v1 packing
# (num_video_tokens, num_audio_and_text_tokens, num_frames, frame_receptive_field)
RANGE_CASES = [(42, 30, 7, 2), (42, 30, 7, 11), (32 * 34 * 60, 125 + 100, 32, 11), (8, 3, 1, 11)]


def _stub_magi_compiler() -> None:
    def identity_decorator(*args, **kwargs):
        return (lambda f: f) if not args or kwargs else args[0]

    pkg = types.ModuleType("magi_compiler")
    pkg.magi_compile = identity_decorator
    api = types.ModuleType("magi_compiler.api")
    api.magi_register_custom_op = identity_decorator
    cfg = types.ModuleType("magi_compiler.config")
    cfg.CompileConfig = object
    sys.modules.update({"magi_compiler": pkg, "magi_compiler.api": api, "magi_compiler.config": cfg})


def _import_data_proxy():
    """``inference.pipeline``'s ``__init__`` pulls the whole pipeline (whisper, ...); load its data proxy alone."""
    import importlib

    import inference

    pkg = types.ModuleType("inference.pipeline")
    pkg.__path__ = [str(Path(next(iter(inference.__path__))) / "pipeline")]
    sys.modules["inference.pipeline"] = pkg
    return importlib.import_module("inference.pipeline.data_proxy")


@contextlib.contextmanager
def _cuda_is_cpu():
    """``calc_local_qk_range`` moves its ranges to CUDA; keep them on the CPU."""
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" else a for a in args)
        return original(self, *args, **kwargs)

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = original


def _exact(q, k, v, mask=None):
    q, k, v = (t.to(torch.bfloat16).float().squeeze(0).transpose(0, 1) for t in (q, k, v))  # [H, L, D]
    k, v = (t.repeat_interleave(q.shape[0] // t.shape[0], dim=0) for t in (k, v))
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1).to(torch.bfloat16)


def _range_mask(q_ranges, k_ranges, length):
    mask = torch.zeros(length, length, dtype=torch.bool)
    for (qs, qe), (ks, ke) in zip(q_ranges.tolist(), k_ranges.tolist()):
        mask[qs:qe, ks:ke] = True
    return mask


def main() -> None:
    _stub_magi_compiler()
    from inference.common import DataProxyConfig
    from inference.common.config import ModelConfig
    from inference.model.dit import dit_module
    from safetensors.torch import save_file
    data_proxy = _import_data_proxy()

    torch.manual_seed(SEED)
    arch = ModelConfig(**ARCH)
    arch.num_heads_q, arch.num_heads_kv = arch.hidden_size // arch.head_dim, arch.num_query_groups
    model = dit_module.DiTModel(arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p, dtype=torch.float32).mul(0.02 if p.dim() > 1 else 0.1).to(p.dtype))

    video = torch.randn(48, *LATENT)
    audio = torch.randn(NUM_AUDIO, 64)
    text = torch.randn(NUM_TEXT, 32)
    proxy = data_proxy.MagiDataProxy(DataProxyConfig(coords_style="v1", frame_receptive_field=FRAME_RECEPTIVE_FIELD))
    t, h, w = LATENT
    single = data_proxy.SingleData(video_x_t=proxy.img2tokens(video[None])[0], audio_x_t=audio,
                                   audio_feat_len=NUM_AUDIO, txt_feat=text, txt_feat_len=NUM_TEXT, t=t, h=h, w=w,
                                   patch_size=2, t_patch_size=1, spatial_rope_interpolation="extra",
                                   ref_audio_offset=1000, text_offset=0, coords_style="v1")  # fmt: skip
    x, coords, modality = single.token_sequence, single.coords_mapping, single.modality_mapping
    with _cuda_is_cpu():
        q_ranges, k_ranges = data_proxy.calc_local_qk_range(single.video_token_num, NUM_AUDIO + NUM_TEXT, t,
                                                           FRAME_RECEPTIVE_FIELD)  # fmt: skip
        cases = {f"ranges.{i}.{kind}": r for i, case in enumerate(RANGE_CASES)
                 for kind, r in zip(("q", "k"), data_proxy.calc_local_qk_range(*case))}  # fmt: skip
    local_mask = _range_mask(q_ranges, k_ranges, x.shape[0])

    calls = {"local": 0, "global": 0}

    def global_attn(q, k, v, cp_split_sizes):
        calls["global"] += 1
        return _exact(q, k, v)

    def local_attn(q, k, v, q_r, k_r, cp_split_sizes):
        calls["local"] += 1
        return _exact(q, k, v, _range_mask(q_r, k_r, q.shape[1]))

    class _NoContextParallel:
        cp_split_sizes = None

        def dispatch(self, t):
            return t

        def undispatch(self, t):
            return t

    dit_module.flash_attn_with_cp, dit_module.flex_flash_attn_with_cp = global_attn, local_attn
    dit_module.ulysses_scheduler = _NoContextParallel
    handler = dit_module.FFAHandler(q_ranges, k_ranges, x.shape[0], x.shape[0], None, None)
    with torch.no_grad():
        out = model(x, coords, modality, None, handler)
    assert calls == {"local": len(arch.local_attn_layers), "global": arch.num_layers - len(arch.local_attn_layers)}
    video_v, audio_v = single.depack_token_sequence(out)
    # v1 coordinates where audio is not 4(T-1)+1 long: its reference is the video's T, not (La-1)//4+1
    odd = data_proxy.SingleData(video_x_t=proxy.img2tokens(video[None])[0], audio_x_t=audio, audio_feat_len=ODD[0],
                                txt_feat=text, txt_feat_len=ODD[1], t=t, h=h, w=w, patch_size=2, t_patch_size=1,
                                spatial_rope_interpolation="extra", ref_audio_offset=1000, text_offset=0,
                                coords_style="v1")  # fmt: skip

    tensors = {**{f"weights.{k}": v.contiguous() for k, v in model.state_dict().items()},
               "inputs.video_latent": video, "inputs.audio_latent": audio, "inputs.text_feat": text,
               "packed.x": x, "packed.coords": coords, "packed.modality": modality, "packed.local_mask": local_mask,
               "packed_odd.coords": odd.coords_mapping,
               "outputs.packed": out.float(), "outputs.video_velocity": video_v.float(),
               "outputs.audio_velocity": audio_v.float(), **{k: v.contiguous() for k, v in cases.items()}}  # fmt: skip
    arch_json = dict(ARCH)
    meta = {"arch": json.dumps(arch_json), "frame_receptive_field": str(FRAME_RECEPTIVE_FIELD),
            "coords_style": "v1", "seed": str(SEED), "range_cases": json.dumps(RANGE_CASES)}  # fmt: skip
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, OUT, meta)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
