"""G2P for the seven languages, offline."""

from __future__ import annotations

import pytest

from hhtune.speech.g2p import normalise_numbers, phonemize
from hhtune.speech.languages import normalise_language

# espeak-ng comes from apt, unpinned: vowel symbols and length marks change between releases. These are the
# properties that do not: the words, consonants that any English/German/French reading has, German final
# devoicing, French nasal vowels, and IPA (not the spelling) coming out.
CASES = {
    "en": ("Hello world", [{"h", "l"}, {"w", "l", "d"}]),
    "de": ("Guten Tag", [{"ɡ", "t", "n"}, {"t", "k"}]),  # Tag ends in [k]: final devoicing
    "fr": ("Bonjour", [{"b", "ʒ", "ʁ"}]),
}


@pytest.mark.parametrize("lang", sorted(CASES))
def test_espeak_languages_give_ipa_per_word(lang):
    text, consonants = CASES[lang]
    words = phonemize(text, lang)
    assert [w.word for w in words] == text.split()
    for w, must in zip(words, consonants):
        assert must <= set(w.phonemes), (w.word, w.phonemes)
        assert w.phonemes != list(w.word.lower()) and w.voice and w.speak == w.word
    if lang == "de":
        assert words[1].phonemes[-1] == "k"
    if lang == "fr":
        assert any("\u0303" in p for p in words[0].phonemes)  # a nasal vowel (combining tilde)


def test_korean_words_and_ipa():
    words = phonemize("안녕하세요 반갑습니다", "ko")
    assert [w.word for w in words] == ["안녕하세요", "반갑습니다"]
    assert "ɐ" in words[0].phonemes and "n" in words[0].phonemes


def test_mandarin_keeps_tones_and_segments_words():
    words = phonemize("欢迎来到春季系列", "zh")
    assert [w.word for w in words][:2] == ["欢迎", "来到"]
    assert words[0].phonemes == ["h", "uan1", "y", "ing2"]
    assert words[0].ipa  # espeak cmn-latn-pinyin IPA alongside


def test_cantonese_jyutping_with_tones():
    words = phonemize("你好，我哋今日去飲茶", "yue")
    assert words[0].phonemes == ["n", "ei5"]
    assert ["ng", "o5", "d", "ei6"] == next(w.phonemes for w in words if w.word == "我哋")


def test_japanese_offline_dictionary():
    words = phonemize("こんにちは、今日はいい天気です", "ja")
    assert words[0].phonemes == ["k", "o", "N", "n", "i", "ch", "i", "w", "a"]
    assert any(w.word == "天気" for w in words)


def test_numbers_are_spelled_in_the_language():
    assert "twenty-five" in normalise_numbers("25 dollars", "en")
    assert "fünfundzwanzig" in normalise_numbers("25 Euro", "de")
    assert "vingt-cinq" in normalise_numbers("25 euros", "fr")
    assert normalise_numbers("99元", "zh") == "九十九元"
    assert normalise_numbers("2025年", "yue") == "二千零二十五年"
    assert [w.word for w in phonemize("only 3 left", "en")] == ["only", "three", "left"]


def test_mixed_language_text_reads_latin_words_as_english():
    words = phonemize("我们的 OK 价格", "zh")
    ok = next(w for w in words if w.word == "OK")
    # read by the English G2P (not left as letters, not read as pinyin), and spoken by the English voice
    assert ok.phonemes == phonemize("OK", "en")[0].phonemes and ok.voice == "en-us"
    assert "OK" not in ok.phonemes and any(not p.isascii() for p in ok.phonemes)
    assert next(w for w in words if w.word == "价格").voice == "cmn-latn-pinyin"


def test_language_names():
    assert normalise_language("en-US") == "en" and normalise_language("Cantonese") == "yue"
    assert normalise_language("cmn") == "zh" and normalise_language("ja-JP") == "ja"
    with pytest.raises(ValueError, match="unknown language 'klingon'; allowed: en, zh, yue, ja, ko, de, fr"):
        normalise_language("klingon")
