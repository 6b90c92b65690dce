"""The captioning stage: descriptions, speakers and background sounds written by a local model or a served one.

``answer`` holds the prompt and the parser of the model's answer; ``media`` what the model sees and hears of a clip;
``local`` and ``endpoint`` the two backends; ``stage`` the stage itself (cache, fallback, captions rebuilt).
"""

from __future__ import annotations

from pathlib import Path

from ..config import CaptionerConfig
from .media import CaptionerError


def load_captioner(cfg: CaptionerConfig):
    """The backend ``cfg`` names: an endpoint client, or the local model loaded (slow: the weights)."""
    if cfg.endpoint:
        from .endpoint import EndpointCaptioner  # noqa: PLC0415 -- only the chosen backend loads its client/library

        return EndpointCaptioner(cfg)
    from .local import LocalCaptioner  # noqa: PLC0415 -- only the chosen backend loads its client/library

    return LocalCaptioner(cfg)


def captioner_identity(cfg: CaptionerConfig) -> tuple[str, bool]:
    """The model part of the cache key and whether the model hears the clip, without loading the model."""
    if cfg.endpoint:
        return f"endpoint:{cfg.model}", cfg.audio
    from .local import local_family, local_identity  # noqa: PLC0415 -- only the chosen backend loads its client/library

    return local_identity(Path(cfg.model)), local_family(Path(cfg.model))[1].hears


__all__ = ["CaptionerError", "captioner_identity", "load_captioner"]
