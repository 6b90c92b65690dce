"""The contract is written once: ``hhtune/contract.py`` holds its numbers, names and allowed values, and the
docstring's examples are what the functions return."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from hhtune import contract
from hhtune.contract import (
    BUCKETS,
    COMPUTE_DTYPES,
    LANGUAGES,
    META_COLUMNS,
    PRESETS,
    LatentShape,
    bucket_size,
    frames_for,
)

ROOT = Path(__file__).parents[1]
SOURCES = sorted(p for d in ("hhtune", "data_prep", "benchmarks") for p in (ROOT / d).rglob("*.py")
                 if p != ROOT / "hhtune" / "contract.py")  # fmt: skip

#: Numbers of the contract, by the name they go by.
NUMBERS = {contract.AUDIO_SAMPLE_RATE: "AUDIO_SAMPLE_RATE", contract.SAMPLES_PER_LATENT: "SAMPLES_PER_LATENT",
           contract.SPEECH_SAMPLE_RATE: "SPEECH_SAMPLE_RATE", contract.TEXT_LENGTH: "TEXT_LENGTH"}  # fmt: skip
#: Strings that name a part of the dataset folder; only contract.py spells them.
NAMES = {contract.VIDEO_LATENTS, contract.AUDIO_LATENTS, contract.TEXT_EMBEDS, contract.REFERENCE_LATENTS,
         contract.SR_VIDEO_LATENTS,
         contract.MANIFEST}  # fmt: skip
#: Allowed-value lists: a literal holding all of one (or all of META_COLUMNS) is a copy; a part of one is a choice.
VALUE_LISTS = {"buckets": set(BUCKETS), "presets": set(PRESETS), "compute dtypes": set(COMPUTE_DTYPES),
               "languages": set(LANGUAGES)}  # fmt: skip
#: The same number meaning something else, with the reason.
ALLOWED = {
    ("benchmarks/_common.py", "SAMPLES_PER_LATENT"): "the side of the square matmul that measures the ceiling",
    ("data_prep/prepare.py", "SPEECH_SAMPLE_RATE"): "a source below 16 kHz is reported as band-limited",
    ("data_prep/sample_footage/make_sample_footage.py", "SPEECH_SAMPLE_RATE"): "one sample file's own audio rate",
    ("data_prep/report.py", "SPEECH_SAMPLE_RATE"): "the rate of the report's small inlined MP3 previews",
    ("hhtune/evaluation/metrics/dnsmos.py", "SPEECH_SAMPLE_RATE"): "the fixed input rate of the DNSMOS models",
    ("hhtune/face.py", "TEXT_LENGTH"): "pixels: the side a whole frame is scaled to for the face search",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (module, class, function): prose, not code."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            out.add(id(first.value))
    return out


def _strings(node: ast.AST) -> set[str]:
    elements = node.keys if isinstance(node, ast.Dict) else node.elts
    return {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def copies_in(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` of every copy of a contract value in ``source``."""
    tree = ast.parse(source)
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and id(node) not in docs:
            if type(node.value) is int and node.value in NUMBERS:
                found.append((line, NUMBERS[node.value]))
            if isinstance(node.value, str) and node.value in NAMES:
                found.append((line, repr(node.value)))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div, ast.FloorDiv)):
            if any(isinstance(s, ast.Constant) and s.value == contract.FPS for s in (node.left, node.right)):
                found.append((line, "FPS"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            strings = _strings(node)
            found += [(line, what) for what, values in VALUE_LISTS.items() if values <= strings]
            if set(META_COLUMNS) <= strings:
                found.append((line, "columns"))
        elif isinstance(node, ast.Dict) and set(BUCKETS) <= _strings(node):
            found.append((line, "buckets"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [(line, t.id) for t in targets if isinstance(t, ast.Name) and t.id in contract.__all__]
    return found


def test_only_contract_py_holds_the_contract():
    copies = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        copies += [f"{rel}:{line}: {what}" for line, what in copies_in(path.read_text()) if (rel, what) not in ALLOWED]
    assert not copies, "import these from hhtune.contract instead:\n" + "\n".join(copies)


@pytest.mark.parametrize("copy", [
    "AUDIO_SAMPLE_RATE = 51200", "hop = 2048", "x = [TEXT_LENGTH, 640]", "seconds = frames / 25", "t = 25.0 * s",
    "FORMAT_VERSION = 1", 'row["video_latents"]', 'path / "manifest.json"', 'A = Literal["16:9", "9:16", "4:3", "1:1"]',
    'S = {"16:9": (16, 9), "9:16": (9, 16), "4:3": (4, 3), "1:1": (1, 1)}', 'p = ("15b", "mid", "tiny")',
    'choices=["auto", "bf16", "fp32"]', 'L = ("en", "zh", "yue", "ja", "ko", "de", "fr")',
    f"need = {(*META_COLUMNS, 'speaker')!r}",
])  # fmt: skip
def test_each_kind_of_copy_is_found(copy):
    assert copies_in(copy), copy


def test_uses_and_prose_are_not_copies():
    ok = ('"""Audio at 51200 Hz, 25 fps, the 16:9 bucket, video_latents."""\n'
          'rate = AUDIO_SAMPLE_RATE\nframes = seconds * FPS\nlang = ["en", "zh", "ja", "de"][i % 4]\n'
          'aspect: Bucket = "16:9"\nrow = {"clip_id": 1, "num_frames": 5, "width": 32}\nn = 4 * 16\n')  # fmt: skip
    assert copies_in(ok) == []


def test_the_docstring_examples_hold():
    doc = contract.__doc__
    examples = re.findall(r"([\d.]+) s -> (\d+) frames", doc)
    assert len(examples) == 3
    for seconds, frames in examples:
        assert frames_for(float(seconds)) == int(frames), seconds
    assert "5 s -> 125 frames" in doc and frames_for(5.0) == 125
    width, height = bucket_size("16:9", 256)
    shape = LatentShape.from_pixels(width, height, frames_for(5.0))
    assert (width, height) == (480, 256) and "(480x256)" in doc
    assert shape.video == (48, 32, 16, 30) and shape.audio == (125, 64) and "[48, 32, 16, 30]" in doc
    assert shape.reference == (48, 1, 16, 30) and shape.audio_samples == 125 * 2048 == 5 * contract.AUDIO_SAMPLE_RATE
    assert bucket_size("9:16", 256) == (256, 480) and "480x256 at 256" in bucket_size.__doc__


@pytest.mark.parametrize("frames,size,video", [
    (1, (32, 32), (48, 1, 2, 2)), (9, (480, 256), (48, 3, 16, 30)), (49, (256, 448), (48, 13, 28, 16)),
    (125, (40, 24), (48, 32, 1, 2)),
])  # fmt: skip
def test_latent_shapes_follow_the_vae_strides(frames, size, video):
    shape = LatentShape.from_pixels(*size, frames)
    assert shape.video == video and shape.audio == (frames, 64) and shape.frames == frames
    with pytest.raises(ValueError, match="4k\\+1 frames, got 8"):
        LatentShape.from_pixels(*size, 8)
