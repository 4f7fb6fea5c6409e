"""The in-process backend: a transformers model in this process (TransformersBackend, in backend.py).

What it is made of, each in its own module: the model folder's files (model_files, hub, digest), the
chat template and token counts without transformers (chat_template), the plan's choices (memory,
gpus, placement, backend_options), loading (load, reuse), and generating (generate, sampling).
This package imports nothing by itself: torch and transformers load with the weights, and the
resolve and plan stages use its file-reading modules without pulling in the rest.
"""

import os

# OpenMP's idle workers sleep rather than spin (threads.py says why); read once, when torch is first
# imported, which in this process happens below this package. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
