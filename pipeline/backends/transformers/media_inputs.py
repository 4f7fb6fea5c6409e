"""Prompts with images and audio as a multimodal model takes them: through the model's own processor.

A multimodal model folder (a vision or audio tower beside the language model) is loaded with
`AutoProcessor` and the matching auto class (`model_class`): image-text-to-text for models that
take images, the multimodal LM class for those that take audio. The chat template writes one
placeholder per part; the processor expands each into the part's tokens and computes the pixels or
audio features. `encode` does that for a batch whose rows carry different numbers of parts;
`count` gives the exact token count of one prompt (the plan's context check and memory estimate
use it, so they see what the model will).

Not here: checking where a part's bytes may come from (pipeline.data.media, at plan time), or
deciding batch sizes (the plan).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from pipeline.core.errors import UserError, first_line
from pipeline.core.records import MediaPart
from pipeline.data.media import AUDIO_SAMPLE_RATE, decode_audio, decode_image, read_bytes

# the keys of a processor's output that are not model inputs for generate
NOT_MODEL_INPUTS = ("num_audio_tokens", "num_image_tokens", "token_type_ids")


def is_multimodal(modalities: Sequence[str]) -> bool:
    return any(kind != "text" for kind in modalities)


def model_class(modalities: Sequence[str]) -> Any:
    """The auto class a model taking `modalities` loads with."""
    if "audio" in modalities:
        from transformers import AutoModelForMultimodalLM

        return AutoModelForMultimodalLM
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def load_processor(folder: str, trust_remote_code: bool = False) -> Any:
    """The model's processor (its tokenizer inside, padding on the left), from the folder only."""
    from transformers import AutoProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # a processor's backend notices are not the run's business
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"cannot read the processor of the multimodal model in {folder}: {first_line(error)}; "
                        "it needs its processor files (processor_config.json or preprocessor_config.json) "
                        "beside the tokenizer") from None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not callable(processor):
        raise UserError(f"the model in {folder} has no processor with a tokenizer; it cannot take images or audio here")
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def decoded(parts: Sequence[MediaPart]) -> tuple[list[Any], list[Any]]:
    """(images, audio clips) of the parts, in order, decoded from their checked bytes."""
    images = [decode_image(read_bytes(p)) for p in parts if p.kind == "image"]
    audio = [decode_audio(read_bytes(p)) for p in parts if p.kind == "audio"]
    return images, audio


def encode(processor: Any, texts: Sequence[str], media: Sequence[Sequence[MediaPart]], special: bool,
           device: Optional[str] = None, dtype: Any = None) -> dict[str, Any]:
    """Model inputs for a batch: each text with its own parts (any number per row, none included),
    left-padded, as tensors (on `device` when given; pixels and audio features in `dtype`, the model's)."""
    images: list[Any] = []
    audio: list[Any] = []
    for parts in media:
        row_images, row_audio = decoded(parts)
        images.extend(row_images)
        audio.extend(row_audio)
    options: dict[str, Any] = {"text": list(texts), "return_tensors": "pt", "padding": True,
                               "add_special_tokens": special}
    if images:
        options["images"] = images
    if audio:
        options["audio"] = audio
        options["sampling_rate"] = AUDIO_SAMPLE_RATE
    try:
        encoded = dict(processor(**options))
    except (ValueError, TypeError) as error:  # most often: the template wrote fewer placeholders than parts
        raise UserError(f"the model's processor refused a prompt with {len(images)} image(s) and {len(audio)} audio "
                        f"clip(s): {first_line(error)}") from None
    for key in NOT_MODEL_INPUTS:
        encoded.pop(key, None)
    if device is not None:
        encoded = {key: value.to(device) if hasattr(value, "to") else value for key, value in encoded.items()}
    if dtype is not None:
        encoded = {key: value.to(dtype) if hasattr(value, "is_floating_point") and value.is_floating_point()
                   else value for key, value in encoded.items()}
    return encoded


def count(processor: Any, text: str, parts: Sequence[MediaPart], special: bool) -> int:
    """The prompt's tokens as the model sees them: its text with each part's placeholder expanded."""
    encoded = encode(processor, [text], [parts], special)
    return int(encoded["attention_mask"][0].sum())


def media_of(messages: Sequence[Any]) -> list[MediaPart]:
    """The parts of a conversation's messages, in the order the chat template writes them."""
    return [part for message in messages for part in message.media]
