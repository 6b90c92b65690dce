"""The report as a producer sees it: opened in a real headless Chromium, its pictures load, its sound has a length,
every caption and transcript of the dataset is on screen as written, and no row is painted by its file's fate."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from test_dataset_report import CAPTION, _clip_files, _unit

from data_prep.config import load_data_config
from data_prep.dataset import load_dataset_dir, write_dataset
from data_prep.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium; `make "
                                                          "system-deps` installs it, CI has it)")  # fmt: skip
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
          "--mute-audio", "--virtual-time-budget=10000")  # fmt: skip

# Run in the page once everything has loaded; the answers are written into the DOM that --dump-dom prints.
_PROBE = """<script>
window.addEventListener("load", async () => {
  const audios = [...document.querySelectorAll("audio")];
  await Promise.all(audios.map(a => a.readyState >= 1 ? null : new Promise(r => {
    a.addEventListener("loadedmetadata", r); a.addEventListener("error", r); a.load(); })));
  const probe = {
    images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
    audio: audios.map(a => a.duration),
    strips: [...document.querySelectorAll("img.thumbs")].map(i => i.getBoundingClientRect().width),
    waves: [...document.querySelectorAll("img.alignment")].map(i => i.getBoundingClientRect().width),
    captions: [...document.querySelectorAll("pre.caption")].map(e => e.innerText),
    transcripts: [...document.querySelectorAll("td.transcript")].map(e => e.innerText),
    text: document.body.innerText,
    rows: [...document.querySelectorAll("#files tr[data-fate]")].map(r => getComputedStyle(r).backgroundColor),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args: str) -> str:
    done = subprocess.run([CHROMIUM, *_FLAGS, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A dataset and its report: a German clip whose caption holds ``<speaker, Language>``, a transcript with
    ``<b>``, a clip in CJK, a skipped file."""
    out = tmp_path_factory.mktemp("report")
    units = [_unit("de", 2, caption=CAPTION, transcript="<b>Willkommen</b> bei uns", frames=25),
             _unit("zh", 1, "zh", caption='Dialogue:\n<a presenter, Mandarin>: "欢 迎"', transcript="欢迎", frames=25),
             _unit("brief", 0)]  # fmt: skip
    units[0].clips[0] = replace(units[0].clips[0], mouth_boxes=((0, 0, 2, 1),) * 6 + ((-1, -1, -1, -1),) * 1,
                                no_face_frames=1)  # a mouth box in every latent frame but the last  # fmt: skip
    _clip_files(units, out, width=56)
    write_dataset(units, out, load_data_config(None, {"base_resolution": 32}), None)
    write_report(units, out)
    return out


def test_report_renders_in_chromium_with_every_caption_and_picture(built, tmp_path):
    page = (built / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium("--dump-dom", probed.as_uri())
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    probe = json.loads(html.unescape(dom[start : dom.index("</pre>", start)]))
    rows = load_dataset_dir(built).dataset
    assert len(probe["images"]) >= 2 * len(rows) + 1  # strip + waveform per clip; the charts
    assert all(done and w > 0 and h > 0 for done, w, h in probe["images"]), probe["images"]
    assert probe["strips"] == probe["waves"] and len(probe["waves"]) == len(rows)  # one time axis, on screen too
    assert len(probe["audio"]) == len(rows) and all(abs(d - 1.0) < 0.1 for d in probe["audio"]), probe["audio"]
    assert probe["captions"] == list(rows["caption"])  # every caption of the dataset, on screen as written
    assert probe["transcripts"] == list(rows["transcript"])
    assert '<a presenter in a studio, German>: "Willkommen"' in probe["text"] and "<b>Willkommen</b>" in probe["text"]
    assert len(set(probe["rows"])) == 1, probe["rows"]  # used, split and skipped rows look alike: the fate is text
    assert "no face in 1 of 7 latent frames" in probe["text"] and "Mouth found in 6 of 7 latent frames" in probe["text"]


def test_report_screenshot_is_not_blank(built, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1800", (built / "report.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1800, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, legend, thumbnails, waveforms
    green = np.all(np.abs(pixels.astype(int) - (0x2E, 0x8B, 0x3E)) < 8, axis=-1)
    assert green.sum() < 0.02 * green.size  # the "used" colour marks timelines, not whole table rows
