"""The official-format check of captions, as the report and benchmarks/caption_format.py use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.caption_format import check_caption, dialogue_lines, split_caption
from data_prep.captions import build_caption
from data_prep.report import write_report
from data_prep.units import Clip, Unit

LONG = " ".join(["word"] * 160) + "."


def _caption(**kw) -> str:
    args = {"lines": ["Hello there.", "Good bye."], "speaker": "a presenter", "language": "en", **kw}
    return build_caption(kw.pop("description", LONG), **{k: v for k, v in args.items() if k != "description"})


def test_a_built_caption_passes_and_splits_into_its_three_parts():
    caption = _caption(trigger="hhbrand", background="soft piano")
    r = check_caption(caption, transcript="Hello there. Good bye.", trigger="hhbrand")
    assert r.ok and r.summary() == "ok" and r.words > 150
    parts = split_caption(caption)
    assert parts.background == "<soft piano>"
    assert parts.dialogue == ['<a presenter, English>: "Hello there."', '<a presenter, English>: "Good bye."']
    assert dialogue_lines(caption) == ["Hello there.", "Good bye."]


def test_cjk_lines_pass_spaced_and_fail_unspaced():
    caption = _caption(lines=["你好，世界"], language="zh")
    assert check_caption(caption, transcript="你好，世界").ok
    unspaced = caption.replace("你 好", "你好")
    assert "CJK characters not separated by spaces" in check_caption(unspaced, transcript="你好，世界").problems


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda c: c.split("\n\nBackground Sound:")[0], "no Background Sound paragraph"),
    (lambda c: c.replace("<soft piano>", "soft piano"), "Background Sound is not one <...>"),
    (lambda c: c.replace("\n\nDialogue:", "\n\nSpeech:"), "no Dialogue paragraph, but the clip has a transcript"),
    (lambda c: c.replace("a presenter, English", "a presenter"), "a Dialogue line has no language tag"),
    (lambda c: c.replace("a presenter, English", "a presenter, Klingon"), "a Dialogue line has no language tag"),
    (lambda c: c.replace(': "Good bye."', ': "Goodbye!"'), "Dialogue lines differ from the transcript"),
    (lambda c: c.replace(': "Good bye."', ": Good bye."), 'a Dialogue line is not <speaker, Language>: "line"'),
    (lambda c: c.replace("hhbrand. ", ""), "trigger 'hhbrand' appears 0 times (want once)"),
    (lambda c: c + " hhbrand", "trigger 'hhbrand' appears 2 times (want once)"),
])  # fmt: skip
def test_each_broken_rule_is_named(edit, problem):
    caption = edit(_caption(trigger="hhbrand", background="soft piano"))
    r = check_caption(caption, transcript="Hello there. Good bye.", trigger="hhbrand")
    assert not r.ok
    assert any(p.startswith(problem) for p in r.problems), r.problems


def test_no_speech_means_no_dialogue_and_a_short_description_is_a_warning_only():
    caption = build_caption("Waves on a beach.", lines=[], speaker="x", language="en", background="surf")
    r = check_caption(caption, transcript="")
    assert r.ok and r.warnings == ["description has 4 words (official: 150-200)"]
    spoken = _caption()
    assert "Dialogue lines differ from the transcript" in check_caption(spoken, transcript="").problems


def test_report_shows_each_clips_format_result_escaped(tmp_path):
    good = _caption()
    bad = _caption().replace("a presenter, English", "<script>alert(1)</script>")
    clips = [Clip(clip_id=f"c{k}", source_file="a.mp4", start_s=0.0, end_s=1.0, language="en", caption=cap,
                  transcript="Hello there. Good bye.", alignment="{}", alignment_method="none",
                  speech_mask=(0.0,) * 25, mask_source="energy", bucket="16:9", width=64, height=32, num_frames=25,
                  speaker="a presenter") for k, cap in enumerate([good, bad])]  # fmt: skip
    write_report([Unit("a.mp4", fate="split", clips=clips)], tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    formats = report["files"][0]["caption_format"]
    assert formats["c0"] == "ok"
    assert formats["c1"].startswith('a Dialogue line is not <speaker, Language>: "line"')
    html = (tmp_path / "report.html").read_text()
    assert html.count('class="caption-format" data-ok="true"') == 1
    assert html.count('class="caption-format" data-ok="false"') == 1
    assert "<script>alert(1)</script>" not in html


@pytest.mark.parametrize("name", ["quickstart", "brand_style_lora", "product_i2v", "spokesperson_multilingual"])
def test_shipped_recipes_validation_prompts_are_in_the_official_format(name):
    import yaml

    recipe = yaml.safe_load((Path(__file__).parents[2] / "recipes" / f"{name}.yaml").read_text())
    (trigger,) = recipe["export"]["trigger_words"]
    for prompt in recipe["validation"]["prompts"]:
        r = check_caption(prompt, transcript=" ".join(dialogue_lines(prompt)), trigger=trigger)
        assert r.ok and not r.warnings, (r.problems, r.warnings)
