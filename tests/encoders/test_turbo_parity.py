"""Parity of hhtune's Turbo VAE decoder with the official ``TurboVAED`` on tiny random weights.

Two references:

* live: the official ``inference/model/turbo_vaed/turbo_vaed_module.py`` read from a checkout of
  daVinci-MagiHuman (``HHTUNE_OFFICIAL_GIT``, a git dir; skipped without it or without einops),
  run on the CPU: its ``@torch.compile`` decorators are made no-ops and its latent statistics,
  pinned to ``device="cuda"`` upstream, are built on the CPU;
* stored: ``tests/fixtures/official_turbo_vaed_tiny.safetensors``, the same official module's
  weights, inputs and outputs on two tiny configs, so a fresh clone checks parity too. Regenerate
  it with ``python tests/encoders/test_turbo_parity.py`` (needs the live reference).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hhtune.encoders.turbo_vae import TurboVAE, TurboVAEConfig

OFFICIAL_GIT = Path(os.environ.get("HHTUNE_OFFICIAL_GIT", "/work/.mirror/GAIR-NLP+daVinci-MagiHuman/repo"))
OFFICIAL_FILE = "inference/model/turbo_vaed/turbo_vaed_module.py"
FIXTURE = Path(__file__).parents[1] / "fixtures" / "official_turbo_vaed_tiny.safetensors"

# The published student's shape (TurboV3-Wan22-TinyShallow_7_7: spatial-only third level, unpatchify,
# depthwise convs possible) at tiny widths; short chunks so a 7-frame latent needs padding and 3 chunks.
TINY_LIKE_RELEASE = dict(
    latent_channels=48, decoder_block_out_channels=[4, 8, 8, 16], decoder_layers_per_block=[1, 1, 1, 2, 1],
    decoder_spatio_temporal_scaling=[False, True, True, True], decoder_spatio_only=[False, True, False, False],
    decoder_is_dw_conv=[False, False, False, True, True], decoder_dw_kernel_size=5, patch_size=2,
    use_unpatchify=True, first_chunk_size=2, step_size=3,
)  # fmt: skip
# The other output path (norm, conv + pixel shuffle) and the official default chunking.
TINY_SHUFFLE = dict(
    latent_channels=48, decoder_block_out_channels=[8, 8, 8, 8], decoder_layers_per_block=[1, 1, 1, 1, 1],
    decoder_spatio_temporal_scaling=[True, True, True, False], decoder_spatio_only=[True, False, False, False],
    patch_size=2, use_unpatchify=False,
)  # fmt: skip
CONFIGS = {"release": TINY_LIKE_RELEASE, "shuffle": TINY_SHUFFLE}
LATENT_FRAMES = (1, 7, 9)
STORED_FRAMES, STORED_SIZE = (1, 7), (2, 2)  # keeps the stored file near 1 MB
# Same ops in the same order: bit-equal on the machine that wrote the fixture; 3e-6 leaves room for other CPUs'
# kernels and still sees a 1e-6 vs 1e-8 slip of a shortcut norm's eps (outputs move by 1e-5).
ATOL = 3e-6


def official_module() -> types.ModuleType:
    """The official ``turbo_vaed_module`` executed from the git dir, or a skip saying what is missing."""
    git = shutil.which("git")
    if git is None or not OFFICIAL_GIT.is_dir():
        pytest.skip(f"no official daVinci-MagiHuman git dir at {OFFICIAL_GIT} (set HHTUNE_OFFICIAL_GIT)")
    pytest.importorskip("einops", reason="the official module imports einops")
    pytest.importorskip("diffusers")
    show = subprocess.run([git, f"--git-dir={OFFICIAL_GIT}", "show", f"HEAD:{OFFICIAL_FILE}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    module = types.ModuleType("official_turbo_vaed_module")
    real_compile = torch.compile
    torch.compile = lambda fn=None, **_: fn  # the official forwards are @torch.compile'd; run them eagerly
    try:
        exec(compile(show.stdout, OFFICIAL_FILE, "exec"), module.__dict__)  # the official source, run as the reference
    finally:
        torch.compile = real_compile
    return module


def build_official(module: types.ModuleType, config: dict, seed: int) -> torch.nn.Module:
    """``TurboVAED(**config)`` with seeded random weights, its cuda-pinned statistics built on the CPU."""
    real_tensor = torch.tensor

    def cpu_tensor(*args, **kwargs):
        kwargs.pop("device", None)
        return real_tensor(*args, **kwargs)

    torch.tensor = cpu_tensor
    try:
        torch.manual_seed(seed)
        model = module.TurboVAED(**config)
    finally:
        torch.tensor = real_tensor
    with torch.no_grad():  # spread the biases too (zero by default) so every parameter matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def latents(frames: int, seed: int, h: int = 3, w: int = 4) -> torch.Tensor:
    return torch.randn(1, 48, frames, h, w, generator=torch.Generator().manual_seed(seed))


def ours_from(state: dict[str, torch.Tensor], config: dict) -> TurboVAE:
    model = TurboVAE(TurboVAEConfig(**config))
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def official():
    return official_module()


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_decode_matches_the_live_official_module(official, name):
    ref = build_official(official, CONFIGS[name], seed=1)
    ours = ours_from(ref.state_dict(), CONFIGS[name])
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for frames in LATENT_FRAMES:
        z = latents(frames, seed=frames)
        want = ref.decode(z)
        got = ours.decode(z)
        assert got.shape == want.shape == (1, 3, 4 * (frames - 1) + 1, 48, 64)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@torch.no_grad()
def test_bf16_decode_matches_the_live_official_module(official):
    ref = build_official(official, TINY_LIKE_RELEASE, seed=2).to(torch.bfloat16)
    ours = ours_from(ref.state_dict(), TINY_LIKE_RELEASE).to(torch.bfloat16)
    z = latents(7, seed=3)
    torch.testing.assert_close(ours.decode(z), ref.decode(z.to(torch.bfloat16)), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_decode_matches_the_stored_official_outputs(name):
    with safe_open(FIXTURE, "pt") as f:
        config = json.loads(f.metadata()[f"{name}.config"])
        stored = {k: f.get_tensor(k) for k in f.keys() if k.startswith(f"{name}.")}
    assert config == CONFIGS[name]
    prefix = f"{name}.weights."
    ours = ours_from({k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}, config)
    for frames in STORED_FRAMES:
        got = ours.decode(stored[f"{name}.inputs.{frames}"])
        torch.testing.assert_close(got, stored[f"{name}.outputs.{frames}"], rtol=0, atol=ATOL)


def write_fixture(path: Path = FIXTURE) -> None:
    """The stored reference: per config its official weights, the latents of each length and the official frames."""
    module = official_module()
    tensors, meta = {}, {}
    for name, config in CONFIGS.items():
        model = build_official(module, config, seed=1)
        meta[f"{name}.config"] = json.dumps(config)
        tensors.update({f"{name}.weights.{k}": v.contiguous() for k, v in model.state_dict().items()})
        for frames in STORED_FRAMES:
            z = latents(frames, seed=frames, h=STORED_SIZE[0], w=STORED_SIZE[1])
            tensors[f"{name}.inputs.{frames}"] = z
            with torch.no_grad():
                tensors[f"{name}.outputs.{frames}"] = model.decode(z).contiguous()
    save_file(tensors, str(path), metadata=meta)


if __name__ == "__main__":
    write_fixture()
    print(f"wrote {FIXTURE}", file=sys.stderr)
