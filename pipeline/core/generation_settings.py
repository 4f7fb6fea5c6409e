"""The effective generation settings of a run, and where each value came from.

Precedence, highest first: the command line, the composed config (conf/generation/*.yaml,
experiments), the model's own generation_config.json, transformers' defaults. A setting left null
in the config falls through to the model, then to the library. Settings that contradict each
other (top_p while decoding greedily, ...) are reported as warnings, not silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable

from pipeline.core.config import GenerationConfig

TRANSFORMERS_DEFAULTS = {"top_p": 1.0, "top_k": 50, "min_p": None, "repetition_penalty": 1.0}
SAMPLING_ONLY = ("top_p", "top_k", "min_p")
NEUTRAL = {"top_p": 1.0, "top_k": 0, "min_p": 0.0}  # values that filter nothing

COMMAND_LINE = "command line"
CONFIG = "config"
MODEL = "model generation_config.json"
LIBRARY = "transformers default"


@dataclass
class EffectiveGeneration:
    values: dict[str, Any]
    sources: dict[str, str]
    warnings: list[str]


def command_line_keys(overrides: Iterable[str]) -> set[str]:
    """The generation settings named on the command line: `generation.top_p=0.9` -> {"top_p"}."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("generation."):
            keys.add(key.split(".", 2)[1])
    return keys


def effective_generation(config: GenerationConfig, model_defaults: dict[str, Any],
                         from_command_line: set[str]) -> EffectiveGeneration:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for item in fields(config):
        value = getattr(config, item.name)
        if value is not None:
            values[item.name] = value
            sources[item.name] = COMMAND_LINE if item.name in from_command_line else CONFIG
        elif model_defaults.get(item.name) is not None:
            values[item.name], sources[item.name] = model_defaults[item.name], MODEL
        else:
            values[item.name], sources[item.name] = TRANSFORMERS_DEFAULTS.get(item.name), LIBRARY
    values["do_sample"] = not config.greedy
    sources["do_sample"] = "temperature > 0" if values["do_sample"] else "temperature = 0 (greedy)"
    return EffectiveGeneration(values, sources, _contradictions(values, sources, model_defaults))


def _contradictions(values: dict[str, Any], sources: dict[str, str], model_defaults: dict[str, Any]) -> list[str]:
    warnings = []
    chosen = {COMMAND_LINE, CONFIG}
    if not values["do_sample"]:
        ignored = [f"{key}={values[key]}" for key in SAMPLING_ONLY
                   if sources[key] in chosen and values[key] is not None and values[key] != NEUTRAL[key]]
        if ignored:
            warnings.append(f"{', '.join(ignored)} set but ignored: temperature 0 decodes greedily "
                            "(set generation.temperature > 0 to sample)")
        if values["num_samples"] > 1:
            warnings.append(f"num_samples={values['num_samples']} while decoding greedily: every completion of a "
                            "prompt is the same (set generation.temperature > 0 for pass@k)")
        if model_defaults.get("do_sample") and sources["temperature"] != COMMAND_LINE:
            warnings.append(f"the model's generation_config.json samples by default (temperature "
                            f"{model_defaults.get('temperature', 1.0)}); this run decodes greedily because "
                            "generation.temperature=0")
    elif values["top_k"] == 1:
        warnings.append("top_k=1 makes sampling greedy whatever the temperature")
    if values["repetition_penalty"] is not None and values["repetition_penalty"] < 1:
        warnings.append(f"repetition_penalty={values['repetition_penalty']} < 1 favours repeating tokens")
    return warnings
