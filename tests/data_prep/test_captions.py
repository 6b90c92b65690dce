"""Stage 6: captions in the official prompt layout; script checks that decide a transcript's fate."""

from __future__ import annotations

import pytest

from data_prep.captions import build_caption, insert_trigger, join_words, space_cjk
from data_prep.checks import script_languages, script_mismatch, too_long


def test_caption_layout_follows_the_official_prompt_format():
    cap = build_caption("A woman presents a watch.", lines=["It keeps time.", "Buy it today!"], speaker="woman in red",
                        language="en", trigger="hhwatch")  # fmt: skip
    desc, dialogue, background = cap.split("\n\n")
    assert desc == 'hhwatch. A woman presents a watch. Woman in red says in English, "It keeps time." "Buy it today!"'
    assert dialogue == 'Dialogue:\n<woman in red, English>: "It keeps time."\n<woman in red, English>: "Buy it today!"'
    assert background == "Background Sound:\n<No prominent background sound>"


def test_no_speech_no_dialogue_and_custom_background():
    cap = build_caption("", lines=[], speaker="x", language="unknown", background="<Soft piano music>")
    assert cap == "Background Sound:\n<Soft piano music>"  # b-roll is never said to show a speaker
    cap = build_caption("", lines=[], speaker="x", language="unknown", trigger="northwind", background="Rain")
    assert cap == "northwind\n\nBackground Sound:\n<Rain>"


def test_cjk_lines_are_spaced_per_character():
    assert space_cjk("有的人在一起，还带着") == "有 的 人 在 一 起， 还 带 着"
    assert space_cjk("나비번알아") == "나 비 번 알 아"
    assert space_cjk("欢迎iPhone用户") == "欢 迎 iPhone 用 户"
    cap = build_caption("d", lines=["欢迎来到"], speaker="a host", language="zh")
    assert '<a host, Mandarin>: "欢 迎 来 到"' in cap
    assert join_words(["欢迎", "来到", "Apple", "店"], "zh") == "欢迎来到 Apple 店"
    assert join_words(["Guten", "Tag"], "de") == "Guten Tag"


@pytest.mark.parametrize("desc,position,want", [
    ("A {trigger} ad.", "start", "A hhx ad."), ("An ad.", "start", "hhx. An ad."), ("An ad.", "end", "An ad. hhx."),
    ("An hhx ad.", "start", "An hhx ad."), ("A {trigger} ad.", "start", "A hhx ad."),
])  # fmt: skip
def test_trigger_goes_where_configured(desc, position, want):
    assert insert_trigger(desc, "hhx", position) == want
    assert insert_trigger("A {trigger} ad.", None) == "A ad."


@pytest.mark.parametrize("text,langs", [
    ("Guten Morgen", {"en", "de", "fr"}), ("欢迎来到我们的春季系列", {"zh", "yue", "ja"}), ("春のコレクション", {"ja"}),
    ("봄 컬렉션에 오신 것을", {"ko"}), ("欢迎 iPhone 用户", {"zh", "yue", "ja"}),
    ("Привет мир", set()), ("123 !", None),
])  # fmt: skip
def test_script_detection(text, langs):
    got = script_languages(text)
    assert got == (langs if langs is not None else {"en", "zh", "yue", "ja", "ko", "de", "fr"})


def test_mismatch_and_length_reasons():
    assert script_mismatch("早上好", "en").startswith(
        "the transcript's script (han) does not match the declared language 'en'")
    assert script_mismatch("早上好", "yue") is None
    assert too_long(20, 2.0) is None and "longer than the clip: 200 phonemes in 2.00 s" in too_long(200, 2.0)
