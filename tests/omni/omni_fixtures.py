"""Builders for the omni tests: tiny random Qwen2-VL, Qwen2.5-VL and Qwen2.5-Omni thinker models with processors built offline.

Each family gets a byte-level BPE tokenizer trained here with its media special tokens, the
PIL Qwen2-VL image processor (small pixel bounds so images are a few tokens), a Whisper feature
extractor (128 mel bins) for Qwen2.5-Omni, and our torchvision-free video processor. Models
have 2 text layers, hidden 64, 4 heads of 16 (mrope sections 2+3+3 = half the head dim).
Media files are generated in memory: a PNG, a WAV and an MPEG-4 video with an AAC track.
"""

from __future__ import annotations

import io
import os
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnitrace_core.media.omni import QWEN2_5_OMNI, QWEN2_5_VL, QWEN2_VL, ModalitySpec, make_processor

torch.set_num_threads(int(os.environ.get("OMNITRACE_TEST_THREADS", "1")))

CORPUS = [
    "Valbrook Works was founded in 1905 in Cedar Falls. The company makes water filters.",
    "The lighthouse stands 42 metres tall. Its keeper lit the lamp every night.",
    "Question: What is in the picture? What was said? Answer in one sentence.",
    "You are a helpful assistant. Answer the question using only the numbered sources.",
    "Sources: [doc1] [img1] [clip] [film] Title system user assistant",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 16  # a 100 x 150 image becomes 84 x 112 px: 3 x 4 merged tokens
VIDEO_SIZE = {"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 4}


def _media_tokens(spec: ModalitySpec) -> list[str]:
    out: list[str] = []
    for tokens in spec.media.values():
        out += [t for t in (tokens.open, tokens.pad, tokens.close) if t not in out]
    return out


def build_tokenizer(spec: ModalitySpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_media_tokens(spec)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    extra: dict[str, str] = {}
    if spec is QWEN2_5_OMNI:  # the Omni processor reads these names off its tokenizer
        media = spec.media
        extra = {
            "image_token": media["image"].pad,
            "audio_token": media["audio"].pad,
            "video_token": media["video"].pad,
            "vision_bos_token": media["image"].open,
            "vision_eos_token": media["image"].close,
            "audio_bos_token": media["audio"].open,
            "audio_eos_token": media["audio"].close,
        }
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=extra
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(spec: ModalitySpec) -> Any:
    from transformers import Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    features = WhisperFeatureExtractor(feature_size=128) if "audio" in spec.media else None
    processor = make_processor(
        spec,
        build_tokenizer(spec),
        Qwen2VLImageProcessorPil(min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS),
        feature_extractor=features,
    )
    processor.videos_kwargs = {"size": dict(VIDEO_SIZE)}  # tiny frames (the class default is 128+ tokens)
    return processor


_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}


def build_model(spec: ModalitySpec, tokenizer: Any, seed: int = 0) -> Any:
    import transformers

    torch.manual_seed(seed)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _media_tokens(spec)}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = {**_TEXT, "vocab_size": len(tokenizer), "bos_token_id": end, "eos_token_id": end}
    if spec is QWEN2_5_OMNI:
        media = spec.media
        config = transformers.Qwen2_5OmniThinkerConfig(
            audio_config={
                "num_mel_bins": 128,
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 32,
                "d_model": 16,
                "output_dim": 64,
                "n_window": 100,
            },
            vision_config={
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_heads": 2,
                "out_hidden_size": 64,
                "fullatt_block_indexes": [0],
            },
            text_config=text,
            image_token_index=ids[media["image"].pad],
            video_token_index=ids[media["video"].pad],
            audio_token_index=ids[media["audio"].pad],
            audio_start_token_id=ids[media["audio"].open],
            audio_end_token_id=ids[media["audio"].close],
            vision_start_token_id=ids[media["image"].open],
        )
    else:
        vision: dict[str, Any] = {
            "depth": 1,
            "num_heads": 2,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        if spec is QWEN2_VL:
            vision |= {"embed_dim": 16, "hidden_size": 64, "mlp_ratio": 2}
        else:
            vision |= {
                "hidden_size": 16,
                "intermediate_size": 32,
                "out_hidden_size": 64,
                "fullatt_block_indexes": [0],
            }
        config_class = getattr(transformers, spec.model_class.replace("ForConditionalGeneration", "Config"))
        media = spec.media
        config = config_class(
            vision_config=vision,
            text_config=text,
            image_token_id=ids[media["image"].pad],
            video_token_id=ids[media["video"].pad],
            vision_start_token_id=ids[media["image"].open],
            vision_end_token_id=ids[media["image"].close],
        )
    config._attn_implementation = "sdpa"
    model = getattr(transformers, spec.model_class)(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model


@dataclass
class Family:
    """One family's tiny model, processor and spec."""

    spec: ModalitySpec
    processor: Any
    model: Any

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


FAMILIES = {"qwen2-vl": QWEN2_VL, "qwen2.5-vl": QWEN2_5_VL, "qwen2.5-omni": QWEN2_5_OMNI}


# -- media --------------------------------------------------------------------------------
def png_bytes(width: int = 150, height: int = 100, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def mp4_bytes(
    seconds: float = 2.6, fps: int = 10, size: tuple[int, int] = (64, 48), with_audio: bool = True
) -> bytes:
    """An MPEG-4 video whose frame ``i`` is uniformly grey ``20 i mod 255`` (plus an AAC tone)."""
    import av

    rate = 16000
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate) if with_audio else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(round(seconds * fps)):
            frame = np.full((size[1], size[0], 3), (i * 20) % 255, dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            t = np.arange(int(seconds * rate)) / rate
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(
                    samples[k : k + 1024].reshape(1, -1), format="flt", layout="mono"
                )
                chunk.sample_rate = rate
                chunk.pts = k
                for packet in audio.encode(chunk):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return buf.getvalue()
