"""Load stage: the only place weights are read into memory.

The tokenizer and model come from the resolved local folder only (a multimodal model's processor
too, and the model through its image-text-to-text or multimodal auto class), in the planned dtype and
attention implementation, on the planned device, or spread over device, CPU and disk through
accelerate's device map when the plan says the weights do not fit. Safetensors only unless
pickle was allowed; no remote code unless trusted. A weight file that cannot be read is reported
with its name and a hint (a LoadError: the run failed, it is not a config mistake).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Optional

from pipeline.backends.transformers.media_inputs import is_multimodal, load_processor, model_class
from pipeline.core.errors import LoadError, UserError, first_line
from pipeline.core.records import LoadedRuntime, ResolvedModel, RuntimePlan

log = logging.getLogger(__name__)


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"runtime.model={model.reference!r}: cannot read the tokenizer in {model.path}: "
                        f"{first_line(error)}") from None
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    tokenizer.truncation_side = "left"  # session.truncation=left keeps the end of a prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(plan: RuntimePlan, chat_template: Any = None, trust_remote_code: bool = False,
         offload_folder: Optional[Path] = None) -> LoadedRuntime:
    """Tokenizer and model in memory as planned. `offload_folder` receives disk-offloaded weights.

    A multimodal model comes with its processor, and its tokenizer is the processor's."""
    processor = None
    if is_multimodal(plan.model.modalities):
        processor = load_processor(plan.model.path, trust_remote_code)
        tokenizer = processor.tokenizer
        tokenizer.truncation_side = "left"
    else:
        tokenizer = load_tokenizer(plan.model, trust_remote_code)
    model = _load_model(plan, trust_remote_code, offload_folder)
    model.eval()
    return LoadedRuntime(plan=plan, tokenizer=tokenizer, model=model, chat_template=chat_template, processor=processor)


def _load_model(plan: RuntimePlan, trust_remote_code: bool, offload_folder: Optional[Path]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    auto_class = model_class(plan.model.modalities) if is_multimodal(plan.model.modalities) else AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the run log, not a progress bar, records the load
    options: dict[str, Any] = {
        "dtype": getattr(torch, plan.dtype),
        "local_files_only": True,
        "use_safetensors": plan.model.weights_format == "safetensors",
        "trust_remote_code": trust_remote_code,
        "attn_implementation": plan.backend_options["attn_implementation"],
    }
    if plan.backend_options["offload"] != "none":
        options["device_map"] = "auto"
        options["max_memory"] = plan.backend_options["max_memory"]
        options["offload_folder"] = str(offload_folder or tempfile.mkdtemp(prefix="pipeline-offload-"))
    try:
        try:
            model = auto_class.from_pretrained(plan.model.path, **options)
        except ValueError as error:
            if plan.backend_options["attn_implementation"] != "sdpa" or "sdpa" not in str(error).lower():
                raise
            log.warning("%s has no sdpa attention; falling back to eager", plan.model.architecture)
            plan.backend_options["attn_implementation"] = "eager"
            model = auto_class.from_pretrained(plan.model.path, **{**options, "attn_implementation": "eager"})
    except Exception as error:
        bad_file = _unreadable_weight_file(plan, error)
        if bad_file is None:
            raise
        raise LoadError(f"cannot read weights file {bad_file} in {plan.model.path}: {first_line(error)}; "
                        "the file is corrupt or incomplete: download or copy it again "
                        "(compare its size and sha256 with the source)") from error
    if plan.backend_options["offload"] == "none":
        model.to(plan.device)
    return model


def _unreadable_weight_file(plan: RuntimePlan, error: BaseException) -> Optional[str]:
    """The weight file a load error is about, when it is about reading one (safetensors or pickle)."""
    text = f"{type(error).__name__} {error}".lower()
    if not any(word in text for word in ("safetensor", "header", "deserializ", "unpickl", "invalid load key",
                                         "pytorchstreamreader", "incomplete", "buffer")):
        return None
    named = [name for name in plan.model.weight_files if name.lower() in text]
    return named[0] if named else ", ".join(plan.model.weight_files)


