"""Input checks that decide a file's fate: the transcript's script against the declared language,
and whether a transcript can fit in the audio at all."""

from __future__ import annotations

import importlib.util
import shutil
import unicodedata

from hhtune.cli import MissingDependencyError
from hhtune.speech.languages import LANGUAGES

ALL_LANGUAGES = frozenset(LANGUAGES)
# The note of a file whose transcript cannot be used (no language declared, none found in its text).
UNUSABLE_TRANSCRIPT = ("transcript present but its language could not be found from its text: not aligned "
                       "(set language in metadata.jsonl or in the data config)")
# Fast read speech is ~15-20 phonemes per second; beyond this a transcript cannot have been said in the clip.
MAX_PHONEMES_PER_SECOND = 30.0


def script_counts(text: str) -> dict[str, int]:
    """Letters of ``text`` per script: ``latin``, ``han``, ``kana``, ``hangul``, ``other``.

    Written over ``unicodedata`` names rather than a regex library (``regex``'s ``\\p{Han}``) to
    add no dependency for four scripts.
    """
    counts = {"latin": 0, "han": 0, "kana": 0, "hangul": 0, "other": 0}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if name.startswith("CJK"):
            counts["han"] += 1
        elif "HIRAGANA" in name or "KATAKANA" in name:
            counts["kana"] += 1
        elif "HANGUL" in name:
            counts["hangul"] += 1
        elif "LATIN" in name:
            counts["latin"] += 1
        else:
            counts["other"] += 1
    return counts


def script_languages(text: str) -> set[str]:
    """Languages whose writing could be ``text``: kana -> ja; Hangul -> ko; Han -> zh/yue/ja; Latin -> en/de/fr.

    Latin words inside CJK text (brand names) do not change the verdict; a text with no letters fits any language.
    """
    c = script_counts(text)
    total = sum(c.values())
    if total == 0:
        return set(ALL_LANGUAGES)
    cjk = c["han"] + c["kana"] + c["hangul"]
    if c["kana"] and c["kana"] >= 0.1 * cjk:
        return {"ja"}
    if c["hangul"] and c["hangul"] >= 0.5 * cjk:
        return {"ko"}
    if c["han"] and c["han"] >= 0.3 * total:
        return {"zh", "yue", "ja"}
    if c["latin"] >= 0.5 * total:
        return {"en", "de", "fr"}
    return set()  # Cyrillic, Arabic, ...: none of the seven


def script_mismatch(text: str, language: str) -> str | None:
    """Why ``text`` cannot be a transcript in ``language``, or ``None`` when it can."""
    fits = script_languages(text)
    if language in fits:
        return None
    c = script_counts(text)
    main = max(c, key=c.get)
    return (f"the transcript's script ({main}) does not match the declared language {language!r} "
            f"(it could be {', '.join(sorted(fits)) or 'none of the seven languages'})")  # fmt: skip


def unusable_transcripts(units: list) -> str | None:
    """The console warning for files whose transcript could not be used (``units``: data_prep Units), or ``None``."""
    bad = [u.file for u in units if UNUSABLE_TRANSCRIPT in u.notes]
    if not bad:
        return None
    named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return (f"{len(bad)} file(s) have a transcript that was not used ({named}): its language could not be found "
            "from its text. Fix: add \"language\": \"en\" (en, zh, yue, ja, ko, de, fr) to their row in "
            "metadata.jsonl, or set `language:` in the data config")  # fmt: skip


def too_long(phonemes: int, seconds: float, limit: float = MAX_PHONEMES_PER_SECOND) -> str | None:
    """Why a transcript of ``phonemes`` cannot fit ``seconds`` of audio, or ``None``."""
    if seconds <= 0 or phonemes / seconds > limit:
        return (f"the transcript is longer than the clip: {phonemes} phonemes in {seconds:.2f} s "
                f"(over {limit:.0f} phonemes/s)")  # fmt: skip
    return None


# What the build runs, and how to get it. Checked once, before any file is touched: a missing tool must stop the
# build with the fix, not turn every file into "skipped".
SYSTEM_TOOLS = {"ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "espeak-ng": "espeak-ng"}  # command -> apt package
PYTHON_MODULES = {"av": "av", "librosa": "librosa", "soundfile": "soundfile", "phonemizer": "phonemizer",
                  "jinja2": "jinja2", "silero_vad": "silero-vad", "pypinyin": "pypinyin", "jieba": "jieba",
                  "pycantonese": "pycantonese", "pyopenjtalk": "pyopenjtalk-plus",
                  "num2words": "num2words", "lingua": "lingua-language-detector", "dlib": "dlib-bin",
                  "face_recognition_models": "face_recognition_models"}  # fmt: skip


class EnvironmentProblem(MissingDependencyError):  # noqa: N818 -- public name; the base class says error
    """A system tool or Python package the build needs is missing; the message has the install command."""


def missing_requirements() -> tuple[list[str], list[str]]:
    """``(apt packages, pip packages)`` the build needs and this machine lacks."""
    apt = sorted({pkg for cmd, pkg in SYSTEM_TOOLS.items() if shutil.which(cmd) is None})
    pip = sorted({pkg for mod, pkg in PYTHON_MODULES.items() if importlib.util.find_spec(mod) is None})
    return apt, pip


def check_environment() -> None:
    """Raise :class:`EnvironmentProblem` naming every missing requirement and the commands that install them."""
    apt, pip = missing_requirements()
    if not apt and not pip:
        return
    fixes = []
    if apt:
        fixes.append(f"missing system tools ({', '.join(apt)}): sudo apt-get install -y {' '.join(apt)}")
    if pip:
        fixes.append(f"missing Python packages ({', '.join(pip)}): pip install {' '.join(pip)}")
    raise EnvironmentProblem("data_prep cannot run here; " + "; ".join(fixes))
