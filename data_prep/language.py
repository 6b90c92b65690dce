"""A transcript's language found from its text, when metadata and the config do not give it.

Three steps, each restricted to the seven languages (:data:`hhtune.contract.LANGUAGES`):

1. the script (:func:`data_prep.checks.script_languages`): kana is Japanese, Hangul is Korean, Han is Chinese or
   Japanese, Latin is English, German or French;
2. within a script, the ``lingua-language-detector`` package (its models ship in the wheel: offline), asked only
   about the languages that script allows;
3. Chinese text is Cantonese or Mandarin by its characters: written Cantonese has words of its own (嘅 係 唔 咗 喺
   冇 佢 哋 啲 嚟 ...), written Mandarin their counterparts (的 是 不 了 在 没 他们 这 那 ...). The text is
   Cantonese when its Cantonese-only characters are at least as many as its Mandarin-only ones (and some);
   the confidence is their share. Standard written Chinese read aloud in Cantonese has no such marks and is
   Mandarin here: declare ``language: yue`` in metadata for it.

A verdict below :data:`MIN_CONFIDENCE` is not taken: the language stays unknown and the build says how to declare it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from hhtune.contract import UNKNOWN_LANGUAGE

from .checks import ALL_LANGUAGES, script_languages

MIN_CONFIDENCE = 0.6  # below this the text does not say its language clearly enough to align it in one
# Characters found in written Cantonese and (almost) never in Mandarin, and the Mandarin words they stand for.
CANTONESE_MARKS = frozenset("嘅係唔咗喺冇佢哋啲嚟乜嘢咁噉睇嗰嘞啱諗揾搵俾畀攰嘥咩喎囉")
MANDARIN_MARKS = frozenset("的是不了在没這这那們们他她吗嗎呢么麼什看来來给給")
_LINGUA = {"en": "ENGLISH", "de": "GERMAN", "fr": "FRENCH", "ja": "JAPANESE", "zh": "CHINESE", "ko": "KOREAN"}


@dataclass(frozen=True)
class Detected:
    """A language found, how sure (0-1), and by what (``script``, ``lingua``, ``characters``)."""

    language: str
    confidence: float
    method: str


def detect_text_language(text: str) -> Detected:
    """The language of ``text`` among the seven, or ``unknown`` (confidence 0) when it cannot be told."""
    fits = script_languages(text)
    if not fits or fits == ALL_LANGUAGES:  # none of the seven scripts, or no letters at all
        return Detected(UNKNOWN_LANGUAGE, 0.0, "script")
    if len(fits) == 1:
        return Detected(next(iter(fits)), 1.0, "script")
    found = _lingua(text, tuple(sorted(fits - {"yue"})))
    if found.language == "zh":
        found = chinese_variety(text, found.confidence)
    return found if found.confidence >= MIN_CONFIDENCE else Detected(UNKNOWN_LANGUAGE, found.confidence, found.method)


def chinese_variety(text: str, confidence: float = 1.0) -> Detected:
    """Cantonese (``yue``) or Mandarin (``zh``) for Chinese ``text``, by the characters of written Cantonese."""
    yue = sum(ch in CANTONESE_MARKS for ch in text)
    zh = sum(ch in MANDARIN_MARKS for ch in text)
    if yue and yue >= zh:
        return Detected("yue", round(confidence * yue / (yue + zh), 3), "characters")
    return Detected("zh", round(confidence * (zh / (yue + zh) if zh else 1.0), 3), "characters")


def _lingua(text: str, languages: tuple[str, ...]) -> Detected:
    """lingua's most likely language of ``text`` among ``languages`` and its confidence."""
    from lingua import Language  # noqa: PLC0415 -- heavy (~100 MB of models), loaded only when a language is unknown

    values = _detector(languages).compute_language_confidence_values(text)
    if not values:
        return Detected(UNKNOWN_LANGUAGE, 0.0, "lingua")
    back = {getattr(Language, name): code for code, name in _LINGUA.items()}
    return Detected(back[values[0].language], round(float(values[0].value), 3), "lingua")


@functools.lru_cache(maxsize=8)
def _detector(languages: tuple[str, ...]):
    from lingua import Language, LanguageDetectorBuilder  # noqa: PLC0415 -- see _lingua

    return LanguageDetectorBuilder.from_languages(*(getattr(Language, _LINGUA[c]) for c in languages)).build()


__all__ = ["CANTONESE_MARKS", "MANDARIN_MARKS", "MIN_CONFIDENCE", "Detected", "chinese_variety",
           "detect_text_language"]  # fmt: skip
