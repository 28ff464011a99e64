"""Shared fixtures: a tiny random Llama with a small byte-level BPE tokenizer, and the packaged model.

The hand-built result factories live in ``tests/factories.py`` and are re-exported here, so
``from tests.conftest import make_answer`` and ``from tests.factories import make_answer`` both work.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.factories import (
    make_answer,
    make_citation,
    make_sentence,
    make_source_info,
    make_token,
    make_unit,
)

__all__ = ["make_answer", "make_citation", "make_sentence", "make_source_info", "make_token", "make_unit"]

torch.set_num_threads(int(os.environ.get("OMNITRACE_TEST_THREADS", "1")))

CORPUS = [
    "Valbrook Works was founded in 1905 in Cedar Falls. The company makes water filters.",
    "The lighthouse stands 42 metres tall. Its keeper lit the lamp every night.",
    "Question: How many people work there? Answer in one sentence.",
    "You are a helpful assistant. Answer the question using only the numbered sources.",
    "Sources: [doc1] [doc2] [doc3] Title system user assistant",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0, layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_tiny_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_tracer(tiny_model, tiny_tokenizer):
    from omnitrace_core import Tracer

    return Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")


@pytest.fixture(scope="session")
def default_tracer():
    """The packaged SmolLM2-135M-Instruct (end-to-end tests)."""
    from omnitrace_core import Tracer

    return Tracer.from_default()


@pytest.fixture()
def sources():
    from omnitrace_core import TextSource

    return [
        TextSource(
            id="doc1", title="Valbrook Works", text="Valbrook Works was founded in 1905 in Cedar Falls."
        ),
        TextSource(id="doc2", title="Lighthouse", text="The lighthouse stands 42 metres tall."),
        TextSource(id="doc3", text="Its keeper lit the lamp every night. The company makes water filters."),
    ]


def shared_bench_dir():
    """The shared benchmark folder (``../shared/bench``), or None when this checkout has none beside it."""
    from pathlib import Path

    candidates = [os.environ.get("OMNITRACE_BENCH_DIR"), Path(__file__).resolve().parents[2] / "shared" / "bench",
                  "/work/shared/bench"]
    for c in candidates:
        if c and (Path(c) / "score.py").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def bench_dir():
    path = shared_bench_dir()
    if path is None:
        pytest.skip("the shared benchmark folder (../shared/bench) is not beside this checkout; "
                    "set OMNITRACE_BENCH_DIR to run this test")
    return path
