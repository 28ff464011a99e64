"""Incremental detokenization: generated ids -> answer text at O(1) amortised cost per token.

``tokenizer.decode(ids)`` re-reads every generated id, so calling it at each decoding step is
quadratic in the answer's length. :class:`IncrementalDecoder` gives, after each id, exactly the
string ``tokenizer.decode(ids, skip_special_tokens=True)`` would give (the caller never feeds it
special ids), by one of three routes chosen from the tokenizer:

- ``bytes``: byte-level BPE tokenizers (GPT-2, SmolLM2, Qwen, Llama 3): every id maps to fixed
  bytes (the ``ByteLevel`` decoder's byte table, or the token's own UTF-8 when a character is not
  in the table, as the Rust decoder does); the bytes go through an incremental UTF-8 decoder
  with ``errors="replace"``, which renders invalid bytes exactly as the decoder's lossy
  conversion does. A character split across tokens is buffered until complete.
- ``window``: other tokenizers without clean-up (SentencePiece / Metaspace with byte fallback,
  ...): decode only the ids since the last complete character plus the ids just before, and
  append the difference (the approach of text-generation-inference); the left context makes
  the first-token space stripping of SentencePiece decoders harmless. If the windowed text is
  not an extension of its context, that step falls back to a full decode.
- ``full``: tokenizers that clean up tokenization spaces (``" ."`` -> ``"."`` may rewrite text
  already produced) or that are not fast tokenizers: the full decode at each step, as before.
"""

from __future__ import annotations

import codecs
from typing import Any, Literal

Route = Literal["bytes", "window", "full"]


def _byte_level_table() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_OF = _byte_level_table()


def choose_route(tokenizer: Any) -> Route:
    """The exact incremental route this tokenizer allows (see the module docstring)."""
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return "full"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "full"
    from tokenizers import decoders

    # (not backend.to_str(): serialising the whole vocabulary costs ~0.3 s per call)
    return "bytes" if isinstance(backend.decoder, decoders.ByteLevel) else "window"


class IncrementalDecoder:
    """Feed non-special ids one at a time; read the text ``tokenizer.decode`` would give.

    :meth:`push` returns the decoded text of every id so far, or ``None`` while it ends in an
    incomplete (or invalid) character, i.e. when the full decode would end with ``"\\ufffd"``.
    """

    def __init__(self, tokenizer: Any, route: Route | None = None) -> None:
        self.tokenizer = tokenizer
        self.route: Route = route or choose_route(tokenizer)
        self.ids: list[int] = []
        self._text = ""  # the decode of the ids read so far (bytes: without buffered bytes)
        # bytes route
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes_of: dict[int, bytes] = {}
        # window route: ids[_prefix:_read] is the context, ids[_read:] is not yet in _text
        self._prefix = 0
        self._read = 0

    def push(self, tok: int) -> str | None:
        self.ids.append(tok)
        if self.route == "bytes":
            return self._push_bytes(tok)
        if self.route == "window":
            return self._push_window()
        text = self._decode(self.ids)
        return None if text.endswith("\ufffd") else text

    # -- routes ------------------------------------------------------------------------------
    def _token_bytes(self, tok: int) -> bytes:
        cached = self._bytes_of.get(tok)
        if cached is None:
            token = self.tokenizer.convert_ids_to_tokens(tok)
            try:
                cached = bytes(_BYTE_OF[c] for c in token)
            except KeyError:  # an added token outside the byte table: its own UTF-8
                cached = token.encode("utf-8")
            self._bytes_of[tok] = cached
        return cached

    def _push_bytes(self, tok: int) -> str | None:
        piece = self._utf8.decode(self._token_bytes(tok), final=False)
        if piece:
            self._text += piece
        pending = self._utf8.getstate()[0]
        if pending or self._text.endswith("\ufffd"):
            return None
        return self._text

    def _push_window(self) -> str | None:
        ids = self.ids
        context = self._decode(ids[self._prefix : self._read]) if self._read > self._prefix else ""
        window = self._decode(ids[self._prefix :])
        if self._prefix == 0:
            full = window  # the window is the whole answer: exact by definition
        elif window.startswith(context):
            full = self._text + window[len(context) :]
        else:  # the decoder rewrote the context: fall back to one full decode
            full = self._decode(ids)
        if full.endswith("\ufffd"):
            return None
        self._text = full
        self._prefix, self._read = self._read, len(ids)
        return full

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
