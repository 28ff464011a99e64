"""Decoding controls shared by every generation path: stop strings and grammar constraints.

**Stop strings.** :func:`validate_stops` checks what a caller passed; :class:`StopMatcher`
finds the first stop string in the text decoded so far and tells how much of it is safe to
release while streaming (text that could still turn into a stop string is held back, so a
stop string never reaches the caller, not even in part). The tracer ends decoding at a stop
string (transformers' ``stop_strings``), trims the answer before it, reports
``finish_reason="stop"`` and attributes the kept text only.

**Grammars.** :class:`Grammar` is a JSON schema, a Lark grammar or a regular expression;
:func:`grammar_processor` turns it into a transformers ``LogitsProcessor`` that masks every
token the grammar does not allow, so the output always parses. The engine is llguidance
(``pip install omnitrace-integrations[structured]``; why this one: ``docs/agents.md``). It
plugs in as one more logits processor: the model, the attention capture and every other
decoding step are unchanged, so traced and untraced constrained decoding produce the same
tokens.

**Repetition under a grammar.** The tracer's ``no_repeat_ngram_size`` guard cannot run as is
under a grammar: JSON repeats its own n-grams (``","``, ``":"``, a key's quotes), so a plain
n-gram ban forbids tokens the grammar requires. Without any guard a small greedy model loops
inside a JSON string until the token limit. :class:`StringRepeatGuard` applies the same
n-gram rule only where the text is free: to tokens that lie wholly inside a JSON string's
content, against n-grams of earlier string contents, never to a token that closes a string or
writes structure, and never so that nothing the grammar allows is left.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from omnitrace_core.errors import InvalidInputError, MissingDependencyError

#: At most this many stop strings per call (transformers compiles each into its stopping check).
MAX_STOPS = 16

GrammarKind = Literal["json_schema", "lark", "regex"]


def validate_stops(stop: str | Sequence[str] | None, field: str = "stop") -> list[str]:
    """The stop strings as a list; a single string is one stop string. ``field`` is the name
    the caller used (``stop`` or transformers' ``stop_strings``), for the error message.

    Raises:
        InvalidInputError: a stop value that is not a non-empty string, or too many of them.
    """
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence):
        raise InvalidInputError(
            f"{field}={stop!r}: must be a string or a list of strings, got {type(stop).__name__}"
        )
    out: list[str] = []
    for k, value in enumerate(stop):
        if not isinstance(value, str):
            raise InvalidInputError(f"{field}[{k}]={value!r}: must be a string, got {type(value).__name__}")
        if value == "":
            raise InvalidInputError(
                f"{field}[{k}]='': is an empty string: an empty stop string would match at once"
            )
        if value not in out:
            out.append(value)
    if len(out) > MAX_STOPS:
        raise InvalidInputError(f"{len(out)} stop strings given; at most {MAX_STOPS} are supported")
    return out


class StopMatcher:
    """Finds stop strings in decoded text and how much text is safe to release."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)

    def find(self, text: str) -> int | None:
        """Where the earliest stop string starts in ``text`` (None: no stop string)."""
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        return min(hits) if hits else None

    def safe_end(self, text: str) -> int:
        """How many leading characters of ``text`` can be released: all but a trailing part
        that is the beginning of some stop string (it may still complete into one)."""
        held = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:n]):
                    held = n
                    break
        return len(text) - held


class Grammar(BaseModel):
    """A constraint on the generated text.

    Build one with :meth:`json_schema`, :meth:`lark` or :meth:`regex`. ``text`` is the schema
    as JSON text, the Lark grammar, or the regular expression.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: GrammarKind
    text: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Grammar:
        """Output must be one JSON value valid for ``schema`` (compact: no whitespace between tokens)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"the JSON schema is not valid JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise InvalidInputError(f"a JSON schema must be an object, got {type(schema).__name__}")
        return cls(kind="json_schema", text=json.dumps(schema, sort_keys=True))

    @classmethod
    def lark(cls, grammar: str) -> Grammar:
        """Output must match a Lark grammar (llguidance's dialect, ``%json {...}`` included)."""
        return cls(kind="lark", text=grammar)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls(kind="regex", text=pattern)


def json_instruction(schema: dict[str, Any] | None = None) -> str:
    """What a model is told when its reply must be JSON: the grammar enforces the shape, this
    text tells the model what the fields are for (shared by every adapter's structured output).
    ``schema=None``: any JSON object."""
    if schema is None:
        return "Reply with one JSON object only."
    return "Reply with one JSON object only, matching this JSON schema:\n" + json.dumps(
        schema, ensure_ascii=False
    )


def close_objects(schema: Any) -> Any:
    """A copy of a JSON schema whose objects allow only their listed properties (where the
    schema says nothing about ``additionalProperties``). Pydantic models and tool signatures
    leave it open; under a grammar an open object lets a model invent keys until the token
    limit, while the parsers ignore or reject them anyway."""
    if isinstance(schema, list):
        return [close_objects(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: close_objects(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def response_format_constraint(response_format: Any) -> tuple[Grammar, str] | None:
    """An OpenAI ``response_format`` as the grammar that enforces it and the instruction that
    tells the model about it (None for ``{"type": "text"}``: no constraint).

    ``{"type": "json_object"}``: any JSON object. ``{"type": "json_schema", "json_schema":
    {"name", "schema", "strict"}}``: one value valid for ``schema``, its objects closed
    (:func:`close_objects`) and the schema shown to the model (:func:`json_instruction`), as
    the adapters' structured output does in-process. ``strict`` is accepted either way: the
    grammar always holds the reply to the schema.

    Raises:
        InvalidInputError: not an object, an unknown ``type``, or a missing / non-object schema.
    """
    if not isinstance(response_format, dict):
        raise InvalidInputError(
            f"response_format must be an object such as {{'type': 'json_object'}}, got {response_format!r}"
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar.json_schema({"type": "object"}), json_instruction(None)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidInputError(
                "response_format json_schema needs 'json_schema': {'name': ..., 'schema': {...}} with "
                f"the schema as a JSON object, got {spec!r}"
            )
        return Grammar.json_schema(close_objects(schema)), json_instruction(schema)
    raise InvalidInputError(
        f"response_format type {kind!r} is not supported (supported: 'text', 'json_object', 'json_schema')"
    )


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError as exc:
        raise MissingDependencyError(
            "constrained decoding (tool calls, structured output, JSON mode) needs llguidance: "
            "pip install 'omnitrace-integrations[structured]'"
        ) from exc
    return llguidance


_LL_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a HF tokenizer (built once per tokenizer and vocabulary size: ~0.4 s)."""
    llg = _llguidance()
    with _LL_LOCK:
        per = _LL_TOKENIZERS.setdefault(tokenizer, {})
        if vocab_size not in per:
            try:
                per[vocab_size] = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
            except ValueError as exc:
                raise InvalidInputError(
                    f"constrained decoding needs a fast (Rust) Hugging Face tokenizer: {exc}"
                ) from exc
        return per[vocab_size]


def grammar_source(grammar: Grammar) -> str:
    """The llguidance grammar text for ``grammar``."""
    llg = _llguidance()
    if grammar.kind == "json_schema":
        return str(
            llg.LLMatcher.grammar_from_json_schema(
                grammar.text, defaults={"whitespace_flexible": False, "lenient": True}
            )
        )
    if grammar.kind == "lark":
        return str(llg.LLMatcher.grammar_from_lark(grammar.text))
    return str(llg.LLMatcher.grammar_from_regex(grammar.text))


_LARK_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def bind_added_tokens(lark: str, tokenizer: Any) -> str:
    """A Lark grammar in which every string literal that is exactly one of the tokenizer's
    added tokens (Qwen2.5's ``<tool_call>`` / ``</tool_call>``) also matches that token.

    llguidance treats added tokens as special: a literal ``"<tool_call>"`` can then be written
    only byte by byte, yet when the literal is forced llguidance's fast path proposes the
    single added token, and consuming it fails ("token doesn't satisfy the grammar"). Each such
    literal becomes ``("<tool_call>" | <[id]>)``, so the model may write the tag the way its
    chat template taught it. ``%json`` lines are left alone (their strings are JSON values).
    """
    added = getattr(tokenizer, "get_added_vocab", None)
    vocab: dict[str, int] = dict(added()) if callable(added) else {}
    if not vocab:
        return lark

    def bind(match: re.Match[str]) -> str:
        try:
            text = json.loads(match.group())
        except json.JSONDecodeError:
            return match.group()
        token = vocab.get(text) if isinstance(text, str) else None
        return match.group() if token is None else f"({match.group()} | <[{token}]>)"

    lines = [
        line if "%json" in line else _LARK_LITERAL.sub(bind, line) for line in lark.split("\n")
    ]
    return "\n".join(lines)


def check_grammar(grammar: Grammar) -> None:
    """Raise :class:`InvalidInputError` naming the problem if the grammar does not compile."""
    llg = _llguidance()
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar_source(grammar))
    if is_error:
        raise InvalidInputError(f"the {grammar.kind} grammar is invalid: {'; '.join(messages)}")


class GrammarLogitsProcessor:
    """A transformers logits processor that lets only grammar-allowed tokens through.

    One instance per ``generate`` call (it follows that call's tokens). Once the grammar is
    complete only end-of-sequence is allowed, so decoding stops with ``finish_reason="stop"``.
    """

    def __init__(self, tokenizer: Any, grammar: Grammar, vocab_size: int) -> None:
        llg = _llguidance()
        self.grammar = grammar
        self._torch = llg.torch
        lltok = _ll_tokenizer(tokenizer, vocab_size)
        compiled = grammar
        if grammar.kind == "lark":
            compiled = Grammar.lark(bind_added_tokens(grammar.text, tokenizer))
        self.matcher = llg.LLMatcher(lltok, grammar_source(compiled), log_level=0)
        if self.matcher.is_error():
            raise InvalidInputError(f"the {grammar.kind} grammar is invalid: {self.matcher.get_error()}")
        self.mask = llg.torch.allocate_token_bitmask(1, vocab_size)
        self._prompt_len: int | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise InvalidInputError("constrained decoding supports one sequence at a time")
        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        else:
            if not self.matcher.consume_token(int(input_ids[0, -1])):
                raise InvalidInputError(
                    f"the model produced a token the {self.grammar.kind} grammar forbids "
                    f"({self.matcher.get_error()})"
                )
        self.steps += 1
        self._torch.fill_next_token_bitmask(self.matcher, self.mask)
        return apply_bitmask(scores, self.mask)


_BITS = torch.arange(32, dtype=torch.int32)


def apply_bitmask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set to ``-inf`` the scores of tokens whose bit is 0 in a packed int32 ``mask`` (one bit per
    token id). Plain torch: llguidance's own helper compiles a kernel with ``torch.compile``,
    which costs seconds on first use and needs a C compiler on CPU."""
    vocab = scores.shape[-1]
    allowed = ((mask.unsqueeze(-1) >> _BITS) & 1).reshape(mask.shape[0], -1)[:, :vocab]
    if allowed.shape[-1] < vocab:  # logits wider than the tokenizer's vocabulary: padding ids
        pad = allowed.new_zeros((allowed.shape[0], vocab - allowed.shape[-1]))
        allowed = torch.cat([allowed, pad], dim=-1)
    return scores.masked_fill(allowed.to(scores.device) == 0, float("-inf"))


def grammar_processor(tokenizer: Any, model: Any, grammar: Grammar) -> GrammarLogitsProcessor:
    """A fresh logits processor for one ``generate`` call over ``model``'s vocabulary.

    Raises:
        MissingDependencyError: llguidance is not installed (names the extra).
        InvalidInputError: the grammar does not compile (with llguidance's message).
    """
    vocab = int(model.get_output_embeddings().weight.shape[0])
    return GrammarLogitsProcessor(tokenizer, grammar, vocab)


class _JsonLexer:
    """Where decoded text stands in JSON: before the first ``{`` / ``[``, outside or inside a
    string (escapes followed). Text before the JSON (e.g. ``<tool_call>``) is skipped."""

    __slots__ = ("escaped", "in_string", "started")

    def __init__(self) -> None:
        self.started = False
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> bool:
        """Advance over ``text``; True if it stayed wholly inside one string's content."""
        inside = self.in_string
        for ch in text:
            if not self.started:
                self.started = ch in "{["
                inside = False
            elif self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    inside = False
            elif ch == '"':
                self.in_string = True
                inside = False
        return inside and bool(text)


class AnswerRepeatGuard:
    """A transformers logits processor: ``no_repeat_ngram_size`` over the answer only.

    transformers' own ``no_repeat_ngram_size`` counts the prompt too, so with the paper's size
    3 an answer may never copy three tokens in a row from a source: asked how tall a lighthouse
    "42 metres tall" is, SmolLM2 answered "43" and "41.5 meters" and misspelled the names it
    read. This guard keeps the paper's intent (no loops in the answer) and bans a token only if
    it would repeat an n-gram of the *generated* tokens. Rows of a batch are kept apart; a new
    ``generate`` call (the sequence did not grow by one token) starts afresh.

    Args:
        size: The n-gram size (``>= 1``; the tracer passes its ``no_repeat_ngram_size``).
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInputError(f"AnswerRepeatGuard size={size!r}: must be a whole number >= 1")
        self.size = size
        self._start = 0
        self._last: int | None = None
        self._next: list[dict[tuple[int, ...], set[int]]] = []

    def __repr__(self) -> str:  # batching compares generation options by repr (batch._gen_key)
        return f"AnswerRepeatGuard(size={self.size})"

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows, length = int(input_ids.shape[0]), int(input_ids.shape[1])
        if self._last is None or length != self._last + 1 or len(self._next) != rows:
            self._start, self._next = length, [{} for _ in range(rows)]
        self._last = length
        n = self.size
        generated = length - self._start
        if generated < n - 1:
            return scores
        tail = input_ids[:, max(self._start, length - n) :].tolist()
        for b, toks in enumerate(tail):
            seen = self._next[b]
            if generated >= n:  # the newest token completes one n-gram
                seen.setdefault(tuple(toks[:-1]), set()).add(toks[-1])
            banned = seen.get(tuple(toks[len(toks) - n + 1 :]) if n > 1 else ())
            if banned:
                scores[b, sorted(banned)] = float("-inf")
        return scores


class StringRepeatGuard:
    """A transformers logits processor: no repeated n-gram inside JSON string contents.

    Runs after a :class:`GrammarLogitsProcessor` (on scores it has masked). While the text is
    inside a JSON string, a token is banned if the last ``n - 1`` content tokens of this string
    followed by it already occurred in the content of this or an earlier string, which is
    ``no_repeat_ngram_size`` restricted to free text. Only content tokens are ever banned (a
    token that closes the string is not in any n-gram, so a string can always end), and a ban
    that would leave no allowed token is skipped, so the grammar always has a way on.

    Args:
        tokenizer: The model's tokenizer (to see each token's text).
        size: The n-gram size (``>= 2``; the tracer passes its ``no_repeat_ngram_size``).
    """

    def __init__(self, tokenizer: Any, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise InvalidInputError(f"StringRepeatGuard size={size!r}: must be a whole number >= 2")
        self.tokenizer = tokenizer
        self.size = size
        self._lexer = _JsonLexer()
        self._texts: dict[int, str] = {}
        self._prompt_len: int | None = None
        self._seen = 0
        self._current: list[int] = []  # content tokens of the string being written
        self._next: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> tokens that followed it
        self.bans = 0  # how many steps banned something (for tests and diagnostics)

    def _text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = str(self.tokenizer.decode([token]))
        return text

    def _consume(self, token: int) -> None:
        text = self._text(token)
        if not text:  # a special token with no text changes nothing
            return
        was_inside = self._lexer.in_string
        if self._lexer.feed(text) and was_inside:
            self._current.append(token)
            if len(self._current) >= self.size:
                self._next.setdefault(tuple(self._current[-self.size : -1]), set()).add(token)
        else:  # a string ended, began, or both in this token: the next content starts afresh
            self._current = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise InvalidInputError("the JSON repetition guard supports one sequence at a time")
        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        generated = input_ids[0, self._prompt_len :].tolist()
        for token in generated[self._seen :]:
            self._consume(int(token))
        self._seen = len(generated)
        if not self._lexer.in_string or len(self._current) < self.size - 1:
            return scores
        banned = self._next.get(tuple(self._current[len(self._current) - self.size + 1 :]))
        if not banned:
            return scores
        ids = torch.tensor(sorted(banned), dtype=torch.long, device=scores.device)
        guarded = scores.index_fill(-1, ids, float("-inf"))
        if not bool(torch.isfinite(guarded).any()):
            return scores  # the grammar allows nothing else: let it repeat rather than fail
        self.bans += 1
        return guarded


class CancelCriteria:
    """A transformers stopping criterion that ends decoding once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def cancel_kwargs(event: threading.Event) -> dict[str, Any]:
    """Generation kwargs that stop decoding when ``event`` is set."""
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([CancelCriteria(event)])}
