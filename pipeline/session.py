"""Where `from pipeline.session import ChatSession` keeps working: the class lives in pipeline.client,
with the RuntimeClient it talks through (one module, so the two no longer import each other)."""

from pipeline.client import ChatSession

__all__ = ["ChatSession"]
