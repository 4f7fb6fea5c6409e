"""Build tiny random-weight multimodal model folders on disk, and small media files, for the media tests.

A Llava (a CLIP vision tower of 16 patches and a 2-layer Llama) and a Qwen2-Audio (a 1-layer
Whisper-style encoder and a 2-layer Qwen2), each saved with its processor and a chat template that
takes `{"type": "image"}` / `{"type": "audio"}` parts, so that AutoProcessor and the auto classes
load them from the folder like any local multimodal model. Random weights answer nonsense, but
their answers depend on the image or the clip, which is what the tests look at.
"""

from __future__ import annotations

import io
import math
import string
import struct
import wave
from pathlib import Path

SPECIAL = ["<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CONTENT = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
           "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
           "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
           "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}")
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>" + CONTENT +
                 "<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
IMAGE_SIZE, PATCH = 32, 8


def _tokenizer(extra: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL + extra
    vocab = {token: i for i, token in enumerate(special + list(string.printable[:95]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(token, special=True) for token in special])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_tiny_vision_model(folder: Path, seed: int = 0, context_length: int = 128) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tokenizer(["<image>"])
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE, image_token="<image>")
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=context_length,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=(IMAGE_SIZE // PATCH) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _scale_up(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_audio_model(folder: Path, seed: int = 0, context_length: int = 256) -> Path:
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    tokenizer = _tokenizer(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=16),
                                    tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=context_length,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    audio = Qwen2AudioEncoderConfig(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2,
                                    encoder_ffn_dim=32, d_model=16, max_source_positions=1500)
    config = Qwen2AudioConfig(audio_config=audio, text_config=text,
                              audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    _scale_up(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _scale_up(model) -> None:
    """Larger random weights than the default init (std 0.02): the answer then follows the input
    closely, where tiny weights make nearly every input give the same greedy tokens."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.5 / math.sqrt(parameter.shape[-1]) * 4)


def png(path: Path, number: int | None = None, size: int = IMAGE_SIZE, color: tuple = (255, 255, 255)) -> Path:
    """A small PNG: a number drawn in black on `color`, or plain `color`."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), color)
    if number is not None:
        ImageDraw.Draw(image).text((4, 8), str(number), fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def wav(path: Path, frequency: float, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A mono 16-bit WAV of a sine tone (written with the standard library)."""
    frames = int(seconds * rate)
    data = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * frequency * i / rate)))
                    for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path
