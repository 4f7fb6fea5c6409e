"""`backend=vllm`: a model run by vLLM's engine in this process (VllmBackend, in backend.py).

Its parts, each in its own module: the settings under vLLM's own names (config), the plan and the kind's
entry in the registry (kind), starting and stopping the engine (engine), and answers made of parts for
thinking budgets and continuations (parts). This package imports nothing by itself: vLLM loads only when
the engine starts.
"""
