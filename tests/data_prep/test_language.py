"""A transcript's language is found from its text (script, lingua, Cantonese characters), among the seven only."""

from __future__ import annotations

import pytest

from data_prep.language import MIN_CONFIDENCE, chinese_variety, detect_text_language


@pytest.mark.parametrize(("text", "language", "method"), [
    ("Good morning and welcome to the show.", "en", "lingua"),
    ("Guten Morgen und willkommen zur Sendung.", "de", "lingua"),
    ("Bonjour et bienvenue à notre émission.", "fr", "lingua"),
    ("我们今天去哪里吃饭，他说不知道。", "zh", "characters"),
    ("我哋今日去邊度食飯，佢話唔知。", "yue", "characters"),
    ("こんにちは、元気ですか。", "ja", "script"),
    ("안녕하세요, 반갑습니다.", "ko", "script"),
])  # fmt: skip
def test_each_language_is_found_in_its_text(text, language, method):
    found = detect_text_language(text)
    assert (found.language, found.method) == (language, method)
    assert found.confidence >= MIN_CONFIDENCE


@pytest.mark.parametrize("text", ["Привет, как дела?", "12 34 56", "OK", ""])
def test_text_that_does_not_say_stays_unknown(text):
    assert detect_text_language(text).language == "unknown"


def test_cantonese_needs_its_own_characters():
    assert chinese_variety("佢係我嘅朋友").language == "yue"
    assert chinese_variety("他是我的朋友").language == "zh"
    assert chinese_variety("今日天氣好").language == "zh"  # no marks either way: Mandarin, the written standard


def test_only_the_seven_are_ever_answered():
    found = detect_text_language("Buenos días y bienvenidos a nuestro programa de esta noche.")  # Spanish
    assert found.language in ("en", "de", "fr", "unknown")  # lingua is asked about the seven only
