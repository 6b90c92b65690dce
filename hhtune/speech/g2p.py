"""Grapheme-to-phoneme per language, offline.

| language | words | phonemes |
| --- | --- | --- |
| en, de, fr, ko | spaces | espeak-ng IPA through ``phonemizer`` |
| zh (Mandarin) | ``jieba`` | ``pypinyin`` initials + finals with tones (IPA: espeak ``cmn-latn-pinyin``; Debian's plain ``cmn`` voice is broken) |
| yue (Cantonese) | ``pycantonese`` | jyutping onset + rhyme with tones (IPA: espeak ``yue``) |
| ja | ``pyopenjtalk`` (the ``pyopenjtalk-plus`` wheel ships its dictionary, so nothing downloads) | OpenJTalk phones |

Numbers become words in the clip's language first; Latin-script words inside
Chinese or Japanese text are read as English.
"""  # noqa: E501 -- a Markdown table: one row per line

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_LATIN_WORD = re.compile(r"[A-Za-zÀ-ÿ'’-]+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_ESPEAK_VOICE = {"en": "en-us", "de": "de", "fr": "fr-fr", "ko": "ko", "zh": "cmn-latn-pinyin", "yue": "yue",
                 "ja": "ja"}  # fmt: skip
_NUM2WORDS = {"en": "en", "de": "de", "fr": "fr", "ko": "ko", "ja": "ja"}
_HAN_DIGITS = "零一二三四五六七八九"


class G2PError(RuntimeError):
    """A language whose G2P backend is missing, naming what to install."""


@dataclass
class WordPhonemes:
    """A word and its phonemes (``ipa`` holds espeak IPA where the phonemes are romanised)."""

    word: str
    phonemes: list[str]
    ipa: list[str] = field(default_factory=list)
    speak: str = ""  # what espeak-ng reads to say the word (pinyin, kana); empty: the word itself
    voice: str = "en-us"  # the espeak-ng voice that says it


def _han_number(n: int) -> str:
    """Integer to Chinese numerals (used for zh and yue; enough for prices, years and counts)."""
    if n == 0:
        return "零"
    units = ["", "十", "百", "千"]
    out = ""
    for big, big_unit in ((10**8, "亿"), (10**4, "万")):
        if n >= big:
            out += _han_number(n // big) + big_unit
            n %= big
            if 0 < n < big // 10:
                out += "零"
    digits = [int(d) for d in str(n)] if n else []
    for i, d in enumerate(digits):
        pos = len(digits) - 1 - i
        if d:
            out += ("" if (d == 1 and pos == 1 and not out and len(digits) == 2) else _HAN_DIGITS[d]) + units[pos]
        elif out and not out.endswith("零") and any(digits[i:]):
            out += "零"
    return out.rstrip("零") or out


def normalise_numbers(text: str, language: str) -> str:
    """Spell out the digits of ``text`` in ``language``."""

    def spell(m: re.Match) -> str:
        raw = m.group(0).replace(",", ".") if language in ("de", "fr") else m.group(0).replace(",", "")
        if language in ("zh", "yue"):
            whole, _, frac = raw.partition(".")
            return _han_number(int(whole)) + ("点" + "".join(_HAN_DIGITS[int(c)] for c in frac) if frac else "")
        from num2words import num2words  # noqa: PLC0415 -- num2words loads in ~0.5 s, only numbers in non-CJK text need it

        value = float(raw) if "." in raw else int(raw)
        return " " + num2words(value, lang=_NUM2WORDS.get(language, "en")) + " "

    return _NUMBER.sub(spell, text)


@functools.cache
def _espeak(voice: str):
    try:
        from phonemizer.backend import EspeakBackend  # noqa: PLC0415 -- per-language backend loaded on first use; its absence is reported there
    except ImportError as e:
        raise G2PError("phonemizer is missing: pip install phonemizer (and apt-get install espeak-ng)") from e
    try:
        return EspeakBackend(voice, preserve_punctuation=False, with_stress=False, language_switch="remove-flags")
    except RuntimeError as e:
        raise G2PError(f"espeak-ng voice {voice!r} unavailable ({e}); apt-get install espeak-ng") from e


def _espeak_words(words: list[str], voice: str) -> list[list[str]]:
    from phonemizer.separator import Separator  # noqa: PLC0415 -- per-language backend loaded on first use

    if not words:
        return []
    out = _espeak(voice).phonemize(words, separator=Separator(phone=" ", word="|", syllable=""), strip=True)
    return [p.replace("|", " ").split() for p in out]


def _split_latin(text: str) -> list[str]:
    return _LATIN_WORD.findall(text)


def _cjk_tokens(tokens: list[str]) -> list[str]:
    return [t for t in (s.strip() for s in tokens) if t and (re.search(r"\w", t))]


def _english(word: str) -> WordPhonemes:
    """A Latin-script word inside Chinese or Japanese text, read as English."""
    return WordPhonemes(word, _espeak_words([word], "en-us")[0], voice="en-us")


def _mandarin(text: str) -> list[WordPhonemes]:
    import jieba  # noqa: PLC0415 -- per-language backend loaded on first use (jieba, pypinyin: ~0.5 s)
    from pypinyin import Style, lazy_pinyin  # noqa: PLC0415 -- per-language backend loaded on first use (jieba, pypinyin: ~0.5 s)

    out = []
    for tok in _cjk_tokens(jieba.lcut(text)):
        if _LATIN_WORD.fullmatch(tok):
            out.append(_english(tok))
            continue
        ini = lazy_pinyin(tok, style=Style.INITIALS, strict=False)
        fin = lazy_pinyin(tok, style=Style.FINALS_TONE3, neutral_tone_with_five=True, strict=False)
        phones = [p for pair in zip(ini, fin) for p in pair if p]
        syllables = lazy_pinyin(tok, style=Style.TONE3, neutral_tone_with_five=True)
        spoken = " ".join(syllables)
        out.append(WordPhonemes(tok, phones, _espeak_words([spoken], _ESPEAK_VOICE["zh"])[0], spoken,
                                _ESPEAK_VOICE["zh"]))
    return out


def _cantonese(text: str) -> list[WordPhonemes]:
    import pycantonese  # noqa: PLC0415 -- per-language backend loaded on first use

    out = []
    for tok in _cjk_tokens(pycantonese.segment(text)):
        if _LATIN_WORD.fullmatch(tok):
            out.append(_english(tok))
            continue
        phones: list[str] = []
        for _, jp in pycantonese.characters_to_jyutping(tok):
            for syl in pycantonese.parse_jyutping(jp or ""):
                phones += [p for p in (syl.onset, f"{syl.nucleus}{syl.coda}{syl.tone}") if p]
        if phones:
            out.append(WordPhonemes(tok, phones, _espeak_words([tok], _ESPEAK_VOICE["yue"])[0], tok,
                                    _ESPEAK_VOICE["yue"]))
    return out


def _japanese(text: str) -> list[WordPhonemes]:
    try:
        import pyopenjtalk  # noqa: PLC0415 -- per-language backend loaded on first use; its absence is reported there
    except ImportError as e:
        raise G2PError("Japanese needs pyopenjtalk with a bundled dictionary: pip install pyopenjtalk-plus") from e
    out = []
    for node in pyopenjtalk.run_frontend(text):
        surface = node["string"]
        if not re.search(r"\w", surface):
            continue
        if _LATIN_WORD.fullmatch(surface):
            out.append(_english(surface))
            continue
        phones = [p for p in pyopenjtalk.g2p(surface).split() if p not in ("pau", "sil")]
        if phones:  # espeak-ng's ja voice reads kana, not kanji: it speaks OpenJTalk's katakana reading
            out.append(WordPhonemes(surface, phones, speak=pyopenjtalk.g2p(surface, kana=True), voice="ja"))
    return out


def phonemize(text: str, language: str) -> list[WordPhonemes]:
    """Words of ``text`` with their phonemes, after number and punctuation normalisation."""
    text = normalise_numbers(text, language)
    if language == "zh":
        return _mandarin(text)
    if language == "yue":
        return _cantonese(text)
    if language == "ja":
        return _japanese(text)
    if language in ("en", "de", "fr"):
        words = _split_latin(text)
    elif language == "ko":
        words = [w for w in (re.sub(r"[^\w]", "", t) for t in text.split()) if w]
    else:
        raise G2PError(f"no G2P for language {language!r}; supported: en, zh, yue, ja, ko, de, fr")
    voice = _ESPEAK_VOICE[language]
    return [WordPhonemes(w, p, speak=w, voice=voice) for w, p in zip(words, _espeak_words(words, voice)) if p]

