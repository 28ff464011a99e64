"""Incremental detokenization gives the same text, token by token, as re-decoding every id."""

from __future__ import annotations

import random
from typing import Any

import pytest

from omnitrace_core.detokenize import IncrementalDecoder, choose_route
from omnitrace_core.tracer import _TextSoFar

MIXED = [
    "The harbor was dredged in 1911. It is 42 metres deep!",
    "Café naïve façade — “quoted” text… and 3.5 km.",
    "東京は日本の首都です。人口は約1400万人です。",
    "Emoji: 👍🏽 🎉 👨‍👩‍👧 🇫🇷 done.",
    "Mixed 中文 and English 😀 with ümlauts and ß in one line.\nNew line 👋.",
]


class _OldTextSoFar:
    """The previous implementation: the full decode of every id at every token."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.ids: list[int] = []
        self.text = ""

    def add(self, tok: int) -> tuple[int, int] | None:
        if tok in self.special:
            return None
        self.ids.append(tok)
        new_text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if new_text.endswith("\ufffd"):
            new_text = self.text
        span = (len(self.text), len(new_text))
        self.text = new_text
        return span


def _assert_same(tokenizer: Any, ids: list[int]) -> _TextSoFar:
    old, new = _OldTextSoFar(tokenizer), _TextSoFar(tokenizer, set())
    for k, tok in enumerate(ids):
        assert new.add(tok) == old.add(tok), f"span differs at token {k}"
        assert new.text == old.text, f"text differs at token {k}"
    assert new.final() == tokenizer.decode(new.ids, skip_special_tokens=True)
    return new


def _random_streams(tokenizer: Any, n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    vocab = len(tokenizer)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


def _sentencepiece_tokenizer() -> Any:
    """A Llama-2-style tokenizer: Metaspace, BPE with byte fallback, strip-leading-space decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("▁", "in"), ("e", "r")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def test_byte_level_route_is_chosen_for_byte_level_bpe(tiny_tokenizer):
    assert choose_route(tiny_tokenizer) == "bytes"
    assert choose_route(_sentencepiece_tokenizer()) == "window"


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_match_full_decode_byte_level(tiny_tokenizer, seed):
    for ids in _random_streams(tiny_tokenizer, 10, 80, seed):
        _assert_same(tiny_tokenizer, ids)


def test_real_streams_match_full_decode_byte_level(tiny_tokenizer):
    for text in MIXED:
        ids = tiny_tokenizer.encode(text, add_special_tokens=False)
        out = _assert_same(tiny_tokenizer, ids)
        assert out.text == text  # every character complete at the end


def test_byte_level_holds_back_a_split_character(tiny_tokenizer):
    ids = tiny_tokenizer.encode("a👍", add_special_tokens=False)
    out = _TextSoFar(tiny_tokenizer, set())
    spans = [out.add(t) for t in ids]
    assert out.text == "a👍"
    # The emoji's bytes come in several tokens; only the last one releases it.
    assert spans[-1] == (1, 2) and all(s == (1, 1) for s in spans[1:-1])


def test_sentencepiece_window_route_matches_full_decode():
    tok = _sentencepiece_tokenizer()
    for text in MIXED:
        ids = tok.encode(text, add_special_tokens=False)
        assert any(tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids) or text.isascii()
        _assert_same(tok, ids)
    for ids in _random_streams(tok, 10, 60, seed=7):
        _assert_same(tok, [i for i in ids if i not in tok.all_special_ids])


def test_full_route_for_cleanup_tokenizers(tiny_tokenizer):
    class Cleaning:
        clean_up_tokenization_spaces = True

    assert choose_route(Cleaning()) == "full"
    dec = IncrementalDecoder(tiny_tokenizer, route="full")
    ids = tiny_tokenizer.encode("Hello there.", add_special_tokens=False)
    texts = [dec.push(t) for t in ids]
    assert texts[-1] == "Hello there."


@pytest.mark.model
def test_packaged_tokenizer_streams_match_full_decode(default_tracer):
    tok = default_tracer.tokenizer
    assert choose_route(tok) == "bytes"
    for text in MIXED:
        ids = tok.encode(text, add_special_tokens=False)
        assert _assert_same(tok, ids).text == text
    special = set(tok.all_special_ids)
    for ids in _random_streams(tok, 20, 120, seed=11):
        _assert_same(tok, ids)  # specials included: skipped by both
    # Byte tokens alone (split characters, invalid sequences).
    rng = random.Random(5)
    byte_ids = [i for i in range(len(tok)) if len(tok.convert_ids_to_tokens(i)) == 1 and i not in special]
    for _ in range(20):
        _assert_same(tok, [rng.choice(byte_ids) for _ in range(60)])


class _OldTracerText(_TextSoFar):
    """The tracer's text accumulator with the previous full re-decode at every token."""

    def add(self, tok: int) -> tuple[int, int] | None:
        if tok in self.special:
            if tok in self.eos:
                self.finish = "stop"
            return None
        self.ids.append(tok)
        new_text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if new_text.endswith("\ufffd"):
            new_text = self.text
        span = (len(self.text), len(new_text))
        self.text = new_text
        return span


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tracer_answers_and_citations_equal_the_old_decoding(tiny_tracer, sources, monkeypatch, seed):
    """The random tiny model writes byte soup (split and invalid characters): the whole traced
    answer, citations and per-token records included, equals the previous implementation's."""
    import torch

    from omnitrace_core import tracer as tracer_module

    q = ["How tall is the lighthouse?", "Who founded Valbrook?", "What does the company make?"][seed]
    torch.manual_seed(seed)
    new = tiny_tracer.generate(sources, q, max_new_tokens=60, do_sample=True, top_k=0, temperature=1.5)
    monkeypatch.setattr(tracer_module, "_TextSoFar", _OldTracerText)
    torch.manual_seed(seed)
    old = tiny_tracer.generate(sources, q, max_new_tokens=60, do_sample=True, top_k=0, temperature=1.5)
    assert new.generated_tokens == old.generated_tokens
    assert new.model_dump(exclude={"timings"}) == old.model_dump(exclude={"timings"})
