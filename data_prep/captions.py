"""Captions in the model's prompt format: description, ``Dialogue:``, ``Background Sound:``."""

from __future__ import annotations

from .languages import NAMES


def build_caption(description: str, *, lines: list[str], speaker: str, language: str, trigger: str | None = None,
                  background: str = "No prominent background sound") -> str:  # fmt: skip
    """The prompt of one clip, as the official prompt design lays it out.

    ``<speaker, Language>: "line"`` per spoken line; the trigger word opens the description.
    """
    desc = description.strip() or "A person speaks to the camera."
    if trigger and trigger not in desc:
        desc = f"{trigger}. {desc}"
    parts = [desc]
    spoken = [ln.strip() for ln in lines if ln.strip()]
    if spoken:
        name = NAMES.get(language, language)
        parts.append("Dialogue:\n" + "\n".join(f'<{speaker}, {name}>: "{ln}"' for ln in spoken))
    parts.append(f"Background Sound:\n{background}")
    return "\n\n".join(parts)
