"""Stage 6: captions in the model's prompt format.

The official prompt design (daVinci-MagiHuman ``prompts/enhanced_prompt_design.md``) lays a prompt out as
three paragraphs: the description; ``Dialogue:`` with one ``<speaker description, Language>: "line"``
per spoken line; ``Background Sound:`` with the most prominent sound in ``<...>`` (``<No prominent
background sound>`` when there is none). CJK text gets a space between every CJK character, as there.
"""

from __future__ import annotations

import re
import unicodedata

LANGUAGE_NAMES = {"en": "English", "zh": "Mandarin", "yue": "Cantonese", "ja": "Japanese", "ko": "Korean",
                  "de": "German", "fr": "French"}  # fmt: skip
NO_BACKGROUND = "No prominent background sound"
TRIGGER_PLACEHOLDER = "{trigger}"
SPEAKER_DESCRIPTION = "A person speaks to the camera."  # the description of spoken clips that metadata does not give


def is_cjk(ch: str) -> bool:
    """Han, kana, Hangul (and CJK punctuation) characters."""
    if ch.isspace():
        return False
    name = unicodedata.name(ch, "")
    scripts = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC", "FULLWIDTH")
    return name.startswith(scripts) or "\u3000" <= ch <= "\u303f"


def space_cjk(text: str) -> str:
    """One space between CJK characters (``你好，世界`` -> ``你 好，世 界``); Latin words keep their own spacing.

    Punctuation stays attached to the character before it, as in the official examples.
    """
    out: list[str] = []
    for ch in text.strip():
        if (out and is_cjk(ch) and not _punct(ch) and not out[-1].isspace()) or (
                out and not ch.isspace() and not _punct(ch) and is_cjk(out[-1]) and not out[-1].isspace()):
            out.append(" ")
        out.append(ch)
    return re.sub(r"\s+", " ", "".join(out)).strip()


def _punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def join_words(words: list[str], language: str) -> str:
    """Aligned words back into a line: spaces between Latin/Hangul words, none inside Chinese or Japanese."""
    if language in ("zh", "yue", "ja"):
        text = ""
        for w in words:
            if text and (not is_cjk(text[-1]) or not is_cjk(w[:1])):
                text += " "
            text += w
        return text
    return " ".join(words)


def insert_trigger(description: str, trigger: str | None, position: str = "start") -> str:
    """Put the trigger word where configured: at ``{trigger}`` when the description has it, else at the
    ``start`` (``"TRIGGER. description"``) or the ``end``; never twice."""
    desc = description.strip()
    if not trigger:
        return desc.replace(TRIGGER_PLACEHOLDER, "").replace("  ", " ").strip()
    if TRIGGER_PLACEHOLDER in desc:
        return desc.replace(TRIGGER_PLACEHOLDER, trigger)
    if re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", desc):
        return desc
    if position == "end":
        return f"{desc.rstrip('.')}. {trigger}." if desc else trigger
    return f"{trigger}. {desc}" if desc else trigger


def build_caption(description: str, *, lines: list[str], speaker: str, language: str, trigger: str | None = None,
                  trigger_position: str = "start", background: str = NO_BACKGROUND) -> str:  # fmt: skip
    """The prompt of one clip: description (trigger inserted), ``Dialogue:`` (when there is speech),
    ``Background Sound:``.

    Every spoken line appears twice, as the official design asks: woven into the description
    (``The speaker says, "..."``) and in the ``Dialogue`` paragraph.
    """
    spoken = [space_cjk(ln) for ln in lines if ln.strip()]
    # the stock description only where someone speaks: b-roll without one is never said to show a speaker
    desc = insert_trigger(description or (SPEAKER_DESCRIPTION if spoken else ""), trigger, trigger_position)
    name = LANGUAGE_NAMES.get(language, language)
    who = (speaker or "the speaker").strip()
    if spoken:
        said = " ".join(f'"{ln}"' for ln in spoken)
        stop = "" if desc.rstrip().endswith((".", "!", "?")) else "."
        desc = f"{desc.rstrip()}{stop} {who[:1].upper()}{who[1:]} says in {name}, {said}"
    parts = [desc] if desc else []
    if spoken:
        parts.append("Dialogue:\n" + "\n".join(f'<{who}, {name}>: "{ln}"' for ln in spoken))
    sound = (background or NO_BACKGROUND).strip().strip("<>")
    parts.append(f"Background Sound:\n<{sound}>")
    return "\n\n".join(parts)
