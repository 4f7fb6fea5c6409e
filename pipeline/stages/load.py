"""Load stage: the only place weights are read into memory.

`load_tokenizer` reads just the tokenizer (the plan stage needs it to count tokens);
`load` puts the model on the planned device in the planned dtype. Files are read from the
resolved local folder only; safetensors only; no remote code unless the config allows it.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError
from pipeline.records import LoadedRuntime, ResolvedModel, RuntimePlan


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"runtime.model={model.reference!r}: cannot read the tokenizer in {model.path}: "
                        f"{str(error).splitlines()[0]}") from None
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(plan: RuntimePlan, tokenizer: Any, trust_remote_code: bool = False) -> LoadedRuntime:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the run log, not a progress bar, records the load

    model = AutoModelForCausalLM.from_pretrained(
        plan.model.path,
        dtype=getattr(torch, plan.dtype),
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    model.to(plan.device)
    model.eval()
    return LoadedRuntime(plan=plan, tokenizer=tokenizer, model=model)
