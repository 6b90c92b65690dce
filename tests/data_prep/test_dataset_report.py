"""Stage 9 and the report without the pipeline: the writer, the reader/validator, stale data, the PIL fallback."""

from __future__ import annotations

import base64
import builtins
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import data_prep.report
from data_prep.config import load_data_config
from data_prep.dataset import load_dataset_dir, write_dataset
from data_prep.report import write_report
from data_prep.units import Clip, Unit
from hhtune.dataset import DatasetError
from hhtune.media import Probe
from hhtune.speech.align import Alignment, Interval


def _unit(name: str, fate_clips: int, language: str = "en", frames: int = 9, caption: str = "c",
          transcript: str = "hi", timeline: list[dict] | None = None) -> Unit:
    clips = []
    for k in range(fate_clips):
        a = Alignment("dtw", [Interval(0.04, 0.2, "hi", 0.5)],
                      [Interval(0.04, 0.1, "h", 0.5), Interval(0.1, 0.2, "aɪ", 0.5)])
        clips.append(Clip(clip_id=f"{name}-{k:03d}", source_file=f"{name}.mp4", start_s=k * 0.36,
                          end_s=k * 0.36 + frames / 25, language=language, caption=caption, transcript=transcript,
                          alignment=a.to_json(), alignment_method="dtw",
                          speech_mask=(1.0,) * 2 + (0.0,) * (frames - 2), mask_source="phonemes (dtw) & silero",
                          bucket="1:1", width=32, height=32, num_frames=frames, speaker="s"))  # fmt: skip
    fate = "skipped" if not clips else "used" if len(clips) == 1 else "split"
    return Unit(f"{name}.mp4", fate, "no audio track" if not clips else "", clips, language=language,
                alignment_method="dtw", probe=Probe(1.0, 25.0, 32, 32, 0, "h264", 1, 16000),
                timeline=timeline)  # fmt: skip


def _clip_files(units: list[Unit], out, width: int = 56, audio: bool = True) -> None:
    """The cached frames (and 51200 Hz stereo sound) of every clip, as the build leaves them in ``.work/clips``."""
    rng = np.random.default_rng(0)
    (out / ".work" / "clips").mkdir(parents=True, exist_ok=True)
    for u in units:
        for c in u.clips:
            frames = rng.integers(0, 255, (c.num_frames, 32, width, 3), dtype=np.uint8)
            sound = {"audio": rng.normal(0, 0.1, (2, round((c.end_s - c.start_s) * 51200))).astype(np.float32)}
            np.savez(out / ".work" / "clips" / f"{c.clip_id}.npz", frames=frames, **(sound if audio else {}))


class _Text(HTMLParser):
    """The text inside elements of the given classes, and every tag name met (what a browser's parser builds)."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        super().__init__()
        self.classes, self.texts, self.tags, self._open = classes, {k: [] for k in classes}, [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        cls = dict(attrs).get("class") or ""
        self._open.append(next((k for k in self.classes if k in cls.split()), None))
        if self._open[-1]:
            self.texts[self._open[-1]].append("")

    def handle_endtag(self, tag):  # noqa: ARG002 -- HTMLParser's signature
        self._open.pop()

    def handle_data(self, data):
        inside = next((k for k in reversed(self._open) if k), None)
        if inside:
            self.texts[inside][-1] += data


def test_unencoded_dataset_roundtrip_and_validation(tmp_path):
    units = [_unit("a", 2), _unit("b", 1, "ko"), _unit("c", 0)]
    cfg = load_data_config(None, {"base_resolution": 32})
    write_dataset(units, tmp_path, cfg, None, footage=tmp_path / "footage")
    d = load_dataset_dir(tmp_path)
    assert len(d.dataset) == 3 and not d.encoded and d.manifest["languages"] == ["en", "ko"]
    assert d.manifest["footage"] == str((tmp_path / "footage").resolve())  # evaluation reads training clips there
    assert set(d.dataset.column_names) >= {"clip_id", "speech_mask", "alignment", "num_frames", "bucket"}
    assert (tmp_path / "alignments" / "a-001.TextGrid").is_file()
    with pytest.raises(DatasetError, match="has no latents"):
        load_dataset_dir(tmp_path, require_encoded=True)
    with pytest.raises(DatasetError, match="other settings or encoders"):
        load_dataset_dir(tmp_path, fingerprint="nope")
    # a row that breaks the format is caught by the reader
    bad = [_unit("a", 1, frames=10)]
    write_dataset(bad, tmp_path / "bad", cfg, None)
    with pytest.raises(DatasetError, match="num_frames 10 is not 4k\\+1"):
        load_dataset_dir(tmp_path / "bad")
    with pytest.raises(DatasetError, match=r"no manifest.json"):
        load_dataset_dir(tmp_path / "nowhere")
    # the manifest's fingerprint follows the settings
    write_dataset(units, tmp_path / "other", load_data_config(None, {"base_resolution": 64}), None)
    other = json.loads((tmp_path / "other" / "manifest.json").read_text())
    assert other["fingerprint"] != d.manifest["fingerprint"]


def test_report_fates_counts_and_pil_fallback(tmp_path, monkeypatch):
    units = [_unit("a", 2), _unit("b", 1, "ko"), _unit("c", 0)]
    for u in units:
        for c in u.clips:
            (tmp_path / ".work" / "clips").mkdir(parents=True, exist_ok=True)
            np.savez(tmp_path / ".work" / "clips" / f"{c.clip_id}.npz", frames=np.zeros((9, 32, 32, 3), np.uint8))
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    summary = write_report(units, tmp_path)
    monkeypatch.undo()
    assert summary["charts_drawn_with"] == "pillow"
    t = summary["totals"]
    assert (t["files"], t["used"], t["used_whole"], t["split"], t["skipped"], t["clips"]) == (3, 2, 1, 1, 1, 3)
    assert summary["by_language"]["en"]["clips"] == 2 and summary["by_bucket"] == {"1:1": {"clips": 3, "seconds": 1.08}}
    assert summary["phonemes"]["ko"]["distinct"] == 2 and summary["alignment"] == {"methods": {"dtw": 3},
                                                                                   "mean_word_confidence": 0.5}
    report = json.loads((tmp_path / "report.json").read_text())
    assert [f["fate"] for f in report["files"]] == ["split", "used", "skipped"]
    page = (tmp_path / "report.html").read_text()
    # strip + waveform per clip, durations, chart per language
    assert page.count("data:image/png;base64") == 3 * 2 + 1 + 2
    assert "split into 2 clips" in page and "no audio track" in page and "charts drawn with pillow" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained


CAPTION = ('Dialogue:\n<a presenter in a studio, German>: "Willkommen"\n'
           'Background Sound:\n<Background Sound>: a hum & a <b>')


def test_report_captions_and_transcripts_are_text_not_markup(tmp_path):
    units = [_unit("a", 2, caption=CAPTION, transcript="<b>bold</b> & <script>x</script>"), _unit("c", 0)]
    units[1].reason = "not a video file (.docx) <i>"
    _clip_files(units, tmp_path)
    write_report(units, tmp_path)
    page = (tmp_path / "report.html").read_text()
    parsed = _Text(("caption", "transcript"))
    parsed.feed(page)
    assert parsed.texts["caption"] == [CAPTION, CAPTION]
    assert parsed.texts["transcript"] == ["<b>bold</b> & <script>x</script>"] * 2
    assert not {"script", "i"} & set(parsed.tags) and parsed.tags.count("a") == len(units)  # the page's own links
    assert "not a video file (.docx) &lt;i&gt;" in page
    assert "|safe" not in (Path(data_prep.report.__file__).parent / "templates" / "report.html.j2").read_text()


def _legend(page: str) -> dict[str, str]:
    swatches = re.findall(r'class="swatch" style="background:(#[0-9a-f]{6})"></span>([^<]+)<', page)
    return dict((name, colour) for colour, name in swatches)


def test_report_colours_are_fixed_per_category_and_the_fate_paints_no_row(tmp_path):
    from data_prep.accounting import NOT_IN_CLIP, SILENCE, UNTRANSCRIBED

    t1 = [{"start": 0.0, "end": 0.3, "status": "dropped", "reason": SILENCE},
          {"start": 0.3, "end": 0.5, "status": "dropped", "reason": "black frames"},
          {"start": 0.5, "end": 1.0, "status": "used", "reason": ""}]  # fmt: skip
    t2 = [{"start": 0.0, "end": 0.2, "status": "dropped", "reason": UNTRANSCRIBED},
          {"start": 0.2, "end": 0.4, "status": "dropped", "reason": NOT_IN_CLIP},
          {"start": 0.4, "end": 0.7, "status": "dropped", "reason": SILENCE},
          {"start": 0.7, "end": 1.0, "status": "dropped", "reason": "too quiet (-60 dB)"}]  # fmt: skip
    legends = []
    for k, timeline in enumerate((t1, t2)):
        out = tmp_path / str(k)
        write_report([_unit("a", 1, timeline=timeline), _unit("c", 0, timeline=timeline)], out)
        page = (out / "report.html").read_text()
        legends.append(_legend(page))
        spans = re.findall(r'data-reason="([^"]*)" title="[^"]*"\s+'
                           r'style="width:[0-9.]+%;background:(#[0-9a-f]{6})"', page)
        assert len(spans) == 2 * len(timeline) and all(legends[-1][why or "used"] == c for why, c in spans)
        assert '<tr class="' not in page and not re.search(r"^\.(used|split|skipped)\b", page, re.M)
    assert set(legends[0]) >= {"used", SILENCE} and set(legends[1]) >= {"used", SILENCE, UNTRANSCRIBED, NOT_IN_CLIP}
    assert legends[0][SILENCE] == legends[1][SILENCE] and legends[0]["used"] == legends[1]["used"]
    mask = next(c for name, c in legends[0].items() if name.startswith("speech in a clip"))
    colours = [c for name, c in legends[1].items() if not name.startswith("speech in a clip")]
    assert len(set(colours)) == len(colours) and mask not in colours
    assert all(not (int(c[1:3], 16) > 180 and int(c[3:5], 16) < 100) for c in (mask, *colours))  # no red in the legend


def test_report_waveform_shares_the_filmstrip_axis_plays_sound_and_speaks_plainly(tmp_path):
    import soundfile
    from PIL import Image

    units = [_unit("a", 1, frames=33)]
    units[0].alignment_confidence = 0.41
    _clip_files(units, tmp_path, width=56)
    write_report(units, tmp_path)
    page = (tmp_path / "report.html").read_text()
    pics = dict(re.findall(r'<img class="(thumbs|alignment)"[^>]*src="data:image/png;base64,([^"]+)"', page))
    strip, wave = (Image.open(io.BytesIO(base64.b64decode(pics[k]))) for k in ("thumbs", "alignment"))
    assert strip.width == wave.width == 6 * 168  # six 168x96 tiles (56x32 frames scaled), the waveform as wide
    (sound,) = re.findall(r'<audio controls[^>]*src="data:audio/mpeg;base64,([^"]+)"', page)
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(sound)))
    assert audio.ndim == 1 and rate == 16000 and abs(len(audio) / rate - 33 / 25) < 0.1
    assert len(sound) < 20_000  # 1.3 s: a few KB, not a WAV's 260
    assert "1 input file," in page and "1 training clip," in page and "1 file used whole" in page
    assert "words timed by matching the transcript to the sound, fair match" in page  # word confidence 0.5
    assert page.count("words timed by matching the transcript to the sound, fair match") == 2  # file row, clip
    assert "dtw (0." not in page and ">phonemes (dtw) & silero<" not in page
    assert 'title="alignment method: dtw, mean word confidence 0.41' in page
    assert 'title="speech mask source: phonemes (dtw) &amp; silero"' in page


def test_every_file_of_the_footage_folder_has_a_fate(tmp_path):
    from data_prep.build import discover

    for name in ("a.mp4", "a.srt", "a.caption.txt", "a.png", "logo.png", "brief.docx", "metadata.jsonl", "ref.jpg"):
        (tmp_path / name).write_text("x")
    found, skipped = discover(tmp_path)
    assert found == ["a.mp4"]
    reasons = {u.file: u.reason for u in skipped}
    assert set(reasons) == {"logo.png", "brief.docx", "ref.jpg"}
    assert reasons["logo.png"].startswith("not a video file (.png)")
    assert reasons["brief.docx"] == "not a video file (.docx)"


def test_check_says_whether_a_dataset_is_trainable(tmp_path, capsys):
    from data_prep.__main__ import main
    from hhtune.training.synthetic import write_synthetic_dataset

    write_dataset([_unit("a", 2)], tmp_path / "plain", load_data_config(None, {"base_resolution": 32}), None)
    capsys.readouterr()  # the writer's progress bars
    assert main(["check", str(tmp_path / "plain")]) == 2  # well formed, but training would refuse it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is not trainable: it has no latents" in err[0]
    assert f"python -m data_prep encode FOOTAGE_DIR --out {tmp_path / 'plain'}" in err[0]
    encoded = write_synthetic_dataset(tmp_path / "encoded", clips=2, with_reference=True)  # an encoded build's layout
    capsys.readouterr()
    assert main(["check", str(encoded)]) == 0
    assert capsys.readouterr().out.startswith(f"{encoded}: trainable: 2 clips with latents")
    assert main(["check", str(tmp_path / "nowhere")]) == 2


def test_a_reference_image_named_in_metadata_is_a_companion_not_a_skipped_file(tmp_path):
    from data_prep.build import prepare_all

    footage = tmp_path / "footage"
    footage.mkdir()
    for name in ("a.mp4", "ref.png", "logo.png"):
        (footage / name).write_text("x")
    (footage / "metadata.jsonl").write_text(json.dumps({"file_name": "a.mp4", "reference_image": "ref.png"}) + "\n")
    units = prepare_all(footage, tmp_path / "out", load_data_config(None, {"workers": 1}), progress=False)
    assert sorted(u.file for u in units) == ["a.mp4", "logo.png"]  # a.mp4 is no real video: skipped, with its reason
