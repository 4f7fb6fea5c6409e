"""The OpenAI-compatible server backend (`backend=openai`): settings (config.py), the server's model
list, token counts and retry policy (client.py), and the Backend itself (backend.py).

The names below are imported on first use: the runner reads this package's plan module (`SERVER`,
`served_tags`) on every run, and importing the backend would load httpx (and, through it, rich) into
runs that talk to no server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OpenAIBackend", "OpenAIConfig"]


def __getattr__(name: str) -> Any:
    if name == "OpenAIBackend":
        from pipeline.backends.openai.backend import OpenAIBackend

        return OpenAIBackend
    if name == "OpenAIConfig":
        from pipeline.backends.openai.config import OpenAIConfig

        return OpenAIConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
