"""The caption review loop: export a CSV, edit it, import it: only the edited clips' text features change."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hhtune.encoders
import hhtune.encoders.audio
import hhtune.encoders.video
from data_prep import encode as encode_module
from data_prep import review
from data_prep.__main__ import main
from data_prep.captions import build_caption
from data_prep.config import load_data_config
from data_prep.dataset import load_dataset_dir, write_dataset
from data_prep.encode import clip_key, encode_clips, latents_key, resolve_encoders
from data_prep.report import write_report
from data_prep.review import CSV_COLUMNS, dialogue_problem
from data_prep.units import Clip, Unit, unit_name
from hhtune.contract import AUDIO_LATENTS, REFERENCE_LATENTS, TEXT_EMBEDS, VIDEO_LATENTS, audio_samples_for
from hhtune.encoders import load_text_encoder
from hhtune.io import atomic_write_text
from hhtune.speech.align import Alignment

SPOKEN = {0: (["Welcome to our spring collection."], "en"), 1: (["It is light and bright."], "en"),
          2: (["你好，欢迎光临。"], "zh"), 3: ([], "en")}  # fmt: skip
FRAMES = 9


def _units(folder: Path) -> list[Unit]:
    """Four clips of one file (English, Mandarin, one with nothing said) and their cached pixels and sound."""
    rng = np.random.default_rng(0)
    clips = []
    for k, (lines, language) in SPOKEN.items():
        cid = f"brand-{k:03d}"
        caption = build_caption("A host stands at a {trigger} counter.", lines=lines, speaker="a host",
                                language=language, trigger="hhbrand")  # fmt: skip
        clips.append(Clip(cid, "brand.mp4", float(k), k + FRAMES / 25, language, caption, " ".join(lines),
                          Alignment().to_json(), "none", (1.0,) * FRAMES, "energy", "1:1", 64, 64, FRAMES,
                          "a host"))  # fmt: skip
        with open(folder / "clips" / f"{cid}.npz", "wb") as f:
            np.savez(f, frames=rng.integers(0, 255, (FRAMES, 64, 64, 3), dtype=np.uint8),
                     audio=rng.standard_normal((2, audio_samples_for(FRAMES))).astype(np.float32) * 0.1)  # fmt: skip
    return [Unit("brand.mp4", fate="split", clips=clips, inputs="fixture")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """An encoded dataset written by stages 8-9 with the tiny encoders, its build cache and its report."""
    out = tmp_path_factory.mktemp("review") / "ds"
    (out / ".work" / "clips").mkdir(parents=True)
    (out / ".work" / "units").mkdir()
    units = _units(out / ".work")
    cfg = load_data_config(None, {"tiny_encoders": True, "base_resolution": 64})
    encoders = resolve_encoders(cfg, out)
    encode_clips(units, out / ".work", encoders, cfg, progress=False)
    write_dataset(units, out, cfg, encoders)
    atomic_write_text(out / ".work" / "units" / unit_name("brand.mp4"), json.dumps(units[0].to_json()))
    atomic_write_text(out / ".work" / "units.json", json.dumps([u.to_json() for u in units]))
    write_report(units, out)
    return out


@pytest.fixture()
def ds(pristine, tmp_path) -> Path:
    """A copy of the dataset to change (its manifest still names the pristine encoders)."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


@pytest.fixture()
def no_av_encoders(monkeypatch):
    """Loading the video or audio VAE fails the test: the review loop re-encodes text only."""
    def refuse(*args, **kwargs):
        raise AssertionError("a video/audio encoder was loaded")

    for module in (hhtune.encoders, hhtune.encoders.video, hhtune.encoders.audio, encode_module):
        for name in ("load_video_vae", "load_audio_vae"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def _export(ds: Path, tmp_path: Path) -> list[dict]:
    assert main(["captions", str(ds), "--export", str(tmp_path / "captions.csv")]) == 0
    with open(tmp_path / "captions.csv", newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _write(rows: list[dict], path: Path, columns=CSV_COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (the exported CSV and thumbnails aside) and a hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file() and p.parent.name != review.THUMBNAILS}  # fmt: skip


def test_export_writes_a_row_and_a_thumbnail_per_clip(ds, tmp_path):
    (ds / ".work" / "clips" / "brand-003.npz").unlink()  # no cached pixels: no thumbnail, the row is still there
    rows = _export(ds, tmp_path)
    table = load_dataset_dir(ds).dataset
    assert list(rows[0]) == list(CSV_COLUMNS) and [r["clip_id"] for r in rows] == table["clip_id"]
    for r, caption, transcript in zip(rows, table["caption"], table["transcript"]):
        assert r["caption"] == caption and r["transcript"] == transcript and r["source_file"] == "brand.mp4"
    assert [float(r["start_s"]) for r in rows] == table["start_s"] and rows[2]["language"] == "zh"
    assert rows[3]["thumbnail"] == ""
    for r in rows[:3]:
        with Image.open(r["thumbnail"]) as img:
            assert Path(r["thumbnail"]).parent == (ds / review.THUMBNAILS).resolve() and img.height == 96
    stamp = Path(rows[0]["thumbnail"]).stat().st_mtime_ns
    _export(ds, tmp_path)
    assert Path(rows[0]["thumbnail"]).stat().st_mtime_ns == stamp  # thumbnails already there are kept


def test_import_reencodes_the_edited_caption_only(ds, tmp_path, no_av_encoders, capsys):
    before = load_dataset_dir(ds).dataset
    rows = _export(ds, tmp_path)
    new = rows[1]["caption"].replace("counter.", "glass counter full of <b>lipsticks</b>.")
    rows[1]["caption"] = new.replace("\n", "\r\n")  # as a spreadsheet saves a cell's line ends
    assert main(["captions", str(ds), "--import", str(_write(rows, tmp_path / "edited.csv"))]) == 0
    assert "1 clip(s) edited (brand-001)" in capsys.readouterr().out
    after = load_dataset_dir(ds).dataset
    assert after["caption"] == [*before["caption"][:1], new, *before["caption"][2:]]
    for column in (VIDEO_LATENTS, AUDIO_LATENTS, REFERENCE_LATENTS, "alignment", "speech_mask", "transcript"):
        assert after.data.column(column).equals(before.data.column(column)), column  # byte for byte
    old, edited = before.with_format("numpy")[TEXT_EMBEDS], after.with_format("numpy")[TEXT_EMBEDS]
    for k in (0, 2, 3):
        assert np.array_equal(edited[k], old[k])
    manifest = json.loads((ds / "manifest.json").read_text())
    text = load_text_encoder(manifest["encoders"]["text_encoder"])
    feats, lengths = text.encode([new])
    assert edited[1].shape == (int(lengths[0]), feats.shape[2]) and not np.array_equal(edited[1][:4], old[1][:4])
    torch.testing.assert_close(torch.from_numpy(edited[1]), feats[0, : int(lengths[0])], rtol=0, atol=1e-5)
    (edit,) = manifest["edits"]
    assert edit["clip_id"] == "brand-001" and edit["fields"] == ["caption"]
    assert (datetime.now().astimezone() - datetime.fromisoformat(edit["at"])).total_seconds() < 600
    page = (ds / "report.html").read_text()
    clips = dict(re.findall(r'<div class="clip" data-clip="([^"]+)">(.*?)</div>', page, re.S))
    assert [k for k, v in clips.items() if 'class="edited"' in v] == ["brand-001"]
    assert "glass counter full of &lt;b&gt;lipsticks" in page and "<b>lipsticks" not in page  # text, not markup
    # the build cache has the edit too: a rebuild keeps the caption and finds its latents up to date
    (unit,) = [Unit.from_json(u) for u in json.loads((ds / ".work" / "units.json").read_text())]
    assert unit.clips[1].caption == new and unit == Unit.from_json(
        json.loads((ds / ".work" / "units" / unit_name("brand.mp4")).read_text()))
    latents = ds / ".work" / "latents" / "brand-001.safetensors"
    assert latents_key(latents) == clip_key(unit.clips[1], unit.inputs)
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(latents)[TEXT_EMBEDS], edited[1])


def test_a_transcript_edit_with_its_dialogue_is_accepted(ds, tmp_path, no_av_encoders):
    rows = _export(ds, tmp_path)
    rows[0]["transcript"] = "Welcome to our summer collection."
    rows[0]["caption"] = rows[0]["caption"].replace("spring", "summer")
    assert main(["captions", str(ds), "--import", str(_write(rows, tmp_path / "edited.csv"))]) == 0
    table = load_dataset_dir(ds).dataset
    assert table["transcript"][0] == "Welcome to our summer collection." and "summer" in table["caption"][0]
    assert json.loads((ds / "manifest.json").read_text())["edits"][0]["fields"] == ["caption", "transcript"]


def test_a_rebuild_keeps_the_edits_without_encoding_again(ds, tmp_path, no_av_encoders):
    rows = _export(ds, tmp_path)
    rows[1]["caption"] = rows[1]["caption"].replace("counter", "desk")
    review.import_captions(ds, _write(rows, tmp_path / "edited.csv"))
    edits = json.loads((ds / "manifest.json").read_text())["edits"]
    units = [Unit.from_json(u) for u in json.loads((ds / ".work" / "units.json").read_text())]
    cfg = load_data_config(None, {"tiny_encoders": True, "base_resolution": 64})
    assert encode_clips(units, ds / ".work", resolve_encoders(cfg, ds), cfg, progress=False) == 0  # stage 8 of a build
    write_dataset(units, ds, cfg, resolve_encoders(cfg, ds))  # stage 9 of a build
    assert json.loads((ds / "manifest.json").read_text())["edits"] == edits
    assert "desk" in load_dataset_dir(ds).dataset["caption"][1]
    (tmp_path / "fresh" / "clips").mkdir(parents=True)
    write_dataset(_units(tmp_path / "fresh"), ds, cfg, None)  # the file prepared again: fresh captions, edit gone
    assert "edits" not in json.loads((ds / "manifest.json").read_text())


def _bad_rows(rows: list[dict], case: str) -> tuple[list[dict], str]:
    """``rows`` edited as ``case`` says, and the reason the import must give."""
    said = rows[1]["caption"]
    if case == "unknown clip":
        rows[2]["clip_id"] = "brand-999"
        return rows, r"row 4 \(clip brand-999\): unknown clip id"
    if case == "dialogue no longer the transcript":
        rows[1]["caption"] = said.replace('>: "It is light', '>: "It is very light')
        return rows, r'row 3 \(clip brand-001\): the Dialogue lines say "It is very light.*transcript says "It is'
    if case == "transcript changed alone":
        rows[1]["transcript"] = "It is dark."
        return rows, r'row 3 \(clip brand-001\): the Dialogue lines say "It is light and bright.".*"It is dark."'
    if case == "dialogue removed":
        rows[1]["caption"] = said.split("\n\nDialogue:")[0] + "\n\nBackground Sound:\n<music>"
        return rows, r"row 3 \(clip brand-001\): the caption has no Dialogue paragraph"
    if case == "dialogue where nothing is said":
        rows[3]["caption"] = 'A host.\n\nDialogue:\n<a host, English>: "Hi."'
        return rows, r"row 5 \(clip brand-003\): the caption has a Dialogue paragraph, but the clip has no transcript"
    if case == "wrong language tag":
        rows[2]["caption"] = rows[2]["caption"].replace(", Mandarin>", ", Cantonese>")
        return rows, r"row 4 \(clip brand-002\): .* is tagged Cantonese, but the clip's language is Mandarin"
    if case == "malformed dialogue line":
        rows[1]["caption"] = said.replace('<a host, English>: "It', 'a host: "It')
        return rows, r"row 3 \(clip brand-001\): the Dialogue line .* is not in the form"
    if case == "clip twice":
        return [*rows, {**rows[0], "caption": "x"}], r"row 6 \(clip brand-000\): the clip is in the file twice"
    if case == "fixed column changed":
        rows[0]["language"] = "de"
        return rows, r"row 2 \(clip brand-000\): language cannot change here"
    if case == "clip times changed":
        rows[0]["end_s"] = "9.5"
        return rows, r"row 2 \(clip brand-000\): end_s cannot change here"
    rows[0]["caption"] = "  "
    return rows, r"row 2 \(clip brand-000\): the caption is empty"


BAD = ("unknown clip", "dialogue no longer the transcript", "transcript changed alone", "dialogue removed",
       "dialogue where nothing is said", "wrong language tag", "malformed dialogue line", "clip twice",
       "fixed column changed", "clip times changed", "empty caption")  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_a_bad_row_refuses_the_file_and_changes_nothing(ds, tmp_path, capsys, case):
    rows = _export(ds, tmp_path)
    rows[0]["caption"] = rows[0]["caption"].replace("counter", "desk")  # a good edit in the same file
    rows, reason = _bad_rows(rows, case)
    before = _tree(ds)
    assert main(["captions", str(ds), "--import", str(_write(rows, tmp_path / "bad.csv"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"error: bad\.csv {reason}.*; nothing was changed$", err[0]), err
    assert _tree(ds) == before


def test_every_bad_row_is_listed_and_a_bad_file_is_refused(ds, tmp_path, capsys):
    rows = _export(ds, tmp_path)
    rows[0]["clip_id"], rows[3]["language"] = "nope", "fr"
    before = _tree(ds)
    assert main(["captions", str(ds), "--import", str(_write(rows, tmp_path / "bad.csv"))]) == 2
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first.startswith("error: bad.csv row 2 (clip nope): unknown clip id")
    assert first.endswith("nothing was changed (1 more row refused, below)")
    assert second.startswith("  row 5 (clip brand-003): language cannot change")
    columns = [c for c in CSV_COLUMNS if c != "transcript"]
    assert main(["captions", str(ds), "--import", str(_write(rows, tmp_path / "cols.csv", columns))]) == 2
    assert re.match(r"error: .*cols\.csv has no transcript column .*nothing was changed$", capsys.readouterr().err)
    (tmp_path / "latin1.csv").write_bytes("clip_id,caption,transcript\nbrand-000,café,\n".encode("latin-1"))
    assert main(["captions", str(ds), "--import", str(tmp_path / "latin1.csv")]) == 2
    assert re.match(r'error: .*latin1\.csv is not UTF-8 text .*"CSV UTF-8"', capsys.readouterr().err)
    assert _tree(ds) == before


def test_other_encoders_are_refused(ds, tmp_path, capsys):
    rows = _export(ds, tmp_path)
    rows[0]["caption"] = rows[0]["caption"].replace("counter", "desk")
    manifest = json.loads((ds / "manifest.json").read_text())
    (ds / "manifest.json").write_text(json.dumps({**manifest, "encoders_fingerprint": "0" * 16}))
    before = _tree(ds)
    assert main(["captions", str(ds), "--import", str(_write(rows, tmp_path / "edited.csv"))]) == 2
    assert "are not those this dataset was built with" in capsys.readouterr().err and _tree(ds) == before


def test_a_crash_while_writing_leaves_the_old_dataset(ds, tmp_path, monkeypatch):
    import datasets

    rows = _export(ds, tmp_path)
    rows[0]["caption"] = rows[0]["caption"].replace("counter", "desk")
    before = _tree(ds)

    def crash(self, path, *args, **kwargs):
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        review.import_captions(ds, _write(rows, tmp_path / "edited.csv"))
    assert _tree(ds) == before and sorted(p.name for p in ds.iterdir() if p.name.startswith(".")) == [".work"]


def test_an_unencoded_dataset_takes_the_caption_only(ds, tmp_path, monkeypatch):
    units = [Unit.from_json(u) for u in json.loads((ds / ".work" / "units.json").read_text())]
    write_dataset(units, ds, load_data_config(None, {"base_resolution": 64}), None)
    monkeypatch.setattr(review, "load_text_encoder", lambda *_, **__: pytest.fail("no encoder for an unencoded set"))
    rows = _export(ds, tmp_path)
    rows[3]["caption"] = "hhbrand. A host waves.\n\nBackground Sound:\n<shop music>"
    assert review.import_captions(ds, _write(rows, tmp_path / "edited.csv"))[0].clip_id == "brand-003"
    d = load_dataset_dir(ds)
    assert not d.encoded and d.dataset["caption"][3].endswith("<shop music>") and d.manifest["edits"]


@pytest.mark.parametrize("lines,language", [(["Hello there.", 'She said "hi".'], "en"),
                                            (["你好，世界。", "欢迎光临"], "zh"), (["こんにちは。"], "ja"),
                                            (["안녕하세요 여러분"], "ko")])  # fmt: skip
def test_captions_the_build_writes_pass_the_dialogue_check(lines, language):
    caption = build_caption("A host.", lines=lines, speaker="a host", language=language)
    assert dialogue_problem(caption, " ".join(lines), language) is None
    assert dialogue_problem(caption, " ".join(lines[:-1]) + " x", language) is not None
