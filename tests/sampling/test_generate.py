"""Prompt to mp4 on the CPU with the tiny model and tiny random decoders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hhtune.encoders import build_tiny_encoders


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(tmp_path_factory.mktemp("enc"))


def _streams(mp4: Path) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,codec_type,duration", "-of",
                          "json",
                          str(mp4)], capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out)["streams"]


@pytest.mark.slow  # the sample command in a subprocess, prompt to mp4
def test_sample_command_writes_a_playable_mp4(encoders, tmp_path):
    from PIL import Image

    image = tmp_path / "ref.png"
    Image.new("RGB", (80, 48), (200, 30, 30)).save(image)
    cmd = [sys.executable, "-m", "hhtune.sample", "--model", "tiny", "--random-weights", "--encoders",
           str(Path(encoders.video_vae).parent),
           "--prompt", 'A host. Dialogue:\n<host, English>: "Hi."', "--seconds", "1", "--base-resolution", "64",
           "--image", str(image), "--out", str(tmp_path / "out"), "--device", "cpu"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert res.returncode == 0, res.stderr[-3000:]
    streams = _streams(tmp_path / "out" / "sample.mp4")
    kinds = {s["codec_type"]: s for s in streams}
    assert kinds["video"]["codec_name"] == "h264" and kinds["audio"]["codec_name"] == "aac"
    assert abs(float(kinds["video"]["duration"]) - 1.0) < 0.1 and abs(float(kinds["audio"]["duration"]) - 1.0) < 0.1
    assert (tmp_path / "out" / "sample_contact.png").is_file() and (tmp_path / "out" / "sample_waveform.png").is_file()


def test_validation_hook_saves_clips_and_returns_metrics(encoders, tmp_path):
    import torch

    from hhtune.model import HappyHorseTransformer, ModelConfig
    from hhtune.sampling.validation import run_validation

    torch.manual_seed(0)
    model = HappyHorseTransformer(ModelConfig.preset("tiny")).eval()
    prompt = ['A host. Dialogue:\n<host, English>: "Hi."']
    scores = run_validation(model, prompt, encoders=encoders, out_dir=tmp_path, step=5, seed=0, seconds=0.5,
                            base_resolution=64)  # fmt: skip
    assert (tmp_path / "prompt00.mp4").is_file()
    assert "nearest_clip_distance" not in scores
    # the random model draws no face: its frames are counted, and no lip-sync is guessed from them
    assert scores["lip_sync_frames_without_face"] == 9 and "lip_sync_confidence" not in scores
    far = [torch.full((48, 3, 4, 6), 100.0)]  # a "training clip" nothing like a sample of this model
    with_clips = run_validation(model, prompt, encoders=encoders, out_dir=tmp_path, step=5, seed=0, seconds=0.5,
                                base_resolution=64, training_clips=far)  # fmt: skip
    assert 0.9 < with_clips["nearest_clip_distance"] < 1.1  # |sample - 100| / |100| with a sample near 0


@pytest.mark.parametrize(("device", "dtype"), [("cuda", "bfloat16"), ("cuda:1", "bfloat16"), ("cpu", "float32"),
                                             ("meta", "float32"), ("mps", "float32")])  # fmt: skip
def test_encoders_default_to_bf16_on_cuda_and_fp32_elsewhere(device, dtype):
    """Decided by the device asked for, not by the machine: this CPU-only machine still answers bf16 for CUDA."""
    import torch

    from hhtune.encoders._common import default_dtype

    assert default_dtype(device) == getattr(torch, dtype)
    assert default_dtype(torch.device(device)) == getattr(torch, dtype)


def test_encoders_load_in_their_device_default_unless_a_dtype_is_given(encoders):
    import torch

    from hhtune.encoders import load_text_encoder, load_video_vae

    assert load_text_encoder(encoders.text_encoder, device="cpu").model.dtype == torch.float32
    vae = load_video_vae(encoders.video_vae, dtype=torch.bfloat16)
    assert {p.dtype for p in vae.model.parameters()} == {torch.bfloat16}


def test_precomputed_prompt_features_replace_the_text_encoder(encoders, monkeypatch):
    import importlib

    import torch

    from hhtune.model import HappyHorseTransformer, ModelConfig

    gen = importlib.import_module("hhtune.sampling.generate")
    torch.manual_seed(0)
    model = HappyHorseTransformer(ModelConfig.preset("tiny")).eval()
    kwargs = dict(seconds=0.5, base_resolution=32, seed=4, decode=False)
    expected = gen.generate(model, "a red ball", encoders, **kwargs)  # loads the text encoder itself
    (feats, n), = gen.encode_prompts(["a red ball"], encoders.text_encoder)
    monkeypatch.setattr(gen, "load_text_encoder", lambda *_a, **_k: pytest.fail("the text encoder was loaded"))
    got = gen.generate(model, "a red ball", encoders, text_features=(feats, n), **kwargs)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    plain = gen.generate(model, "a red ball", encoders, text_features=(feats, n), seconds=0.5, base_resolution=32,
                         seed=4)
    tiled = gen.generate(model, "a red ball", encoders, text_features=(feats, n), seconds=0.5, base_resolution=32,
                         seed=4,
                         vae_tiling=True, offload_model=True)  # fmt: skip
    assert next(model.parameters()).device.type == "cpu"  # put back where it was
    assert abs(tiled.frames.astype(int) - plain.frames.astype(int)).max() <= 1


@pytest.mark.parametrize("sampler", ["distilled", "base"])
def test_sample_command_frees_the_text_encoder_before_the_dit_exists(encoders, tmp_path, monkeypatch, sampler):
    """`python -m hhtune.sample` never holds the text encoder beside the DiT: it is dead when the DiT is built
    and runs."""
    import gc
    import importlib
    import weakref

    from hhtune.model import HappyHorseTransformer
    from hhtune.sample import main

    gen = importlib.import_module("hhtune.sampling.generate")
    loaded, events = [], []
    load, init, forward = gen.load_text_encoder, HappyHorseTransformer.__init__, HappyHorseTransformer.forward

    def recording_load(*args, **kwargs):
        enc = load(*args, **kwargs)
        loaded.append(weakref.ref(enc))
        events.append(("load", True))
        return enc

    def encoder_alive() -> bool:
        gc.collect()
        return any(ref() is not None for ref in loaded)

    def checking_init(self, *args, **kwargs):
        events.append(("build", encoder_alive()))
        init(self, *args, **kwargs)

    def checking_forward(self, *args, **kwargs):
        events.append(("forward", encoder_alive()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(gen, "load_text_encoder", recording_load)
    monkeypatch.setattr(HappyHorseTransformer, "__init__", checking_init)
    monkeypatch.setattr(HappyHorseTransformer, "forward", checking_forward)
    argv = ["--model", "tiny", "--random-weights", "--encoders", str(Path(encoders.video_vae).parent), "--prompt",
            "a cat",
            "--seconds", "0.2", "--base-resolution", "32", "--sampler", sampler, "--out", str(tmp_path), "--device",
            "cpu"]
    assert main(argv) == 0
    kinds = [kind for kind, _ in events]
    # one load, first: the prompt (and for the base sampler the negative prompt) are encoded before the DiT exists
    assert kinds[0] == "load" and kinds.count("load") == 1 and kinds[1] == "build" and "forward" in kinds
    assert all(alive is False for kind, alive in events if kind != "load")
