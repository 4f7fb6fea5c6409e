"""The OpenAI-compatible server backend (`backend=openai`): settings (config.py), the server's model
list, token counts and retry policy (client.py), and the Backend itself (backend.py)."""

from pipeline.backends.openai.backend import OpenAIBackend
from pipeline.backends.openai.config import OpenAIConfig

__all__ = ["OpenAIBackend", "OpenAIConfig"]
