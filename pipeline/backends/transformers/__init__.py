"""The in-process backend: a transformers model in this process (see backend.py).

Importing this package does not import torch or transformers: they load with the weights."""

from pipeline.backends.transformers.backend import TransformersBackend

__all__ = ["TransformersBackend"]
