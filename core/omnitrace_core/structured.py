"""Per-field citations for structured output: a field-level view on an answer's attribution.

A structured reply (JSON decoded under a grammar) is attributed like any answer: every
generated token has its top source unit and confidence, and sentences get curated citations.
A sentence of JSON is not what a caller reads, though: they read *fields*. This module finds
each leaf field's value in the raw JSON text (a JSON path such as ``name`` or
``items[0].city`` and the value's character span) and cites it from the tokens inside that
span, with the same per-sentence curation (POS weight, confidence, run coherence, ``p_min``,
coverage) applied to the field's tokens instead of a sentence's. Nothing is re-run: it is a
pure function of a :class:`~omnitrace_core.results.TracedAnswer`.

A string field's span is its content between the quotes (escapes as written), so the quote
tokens do not vote; a number, ``true`` / ``false`` / ``null`` or an empty ``{}`` / ``[]`` spans
its literal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omnitrace_core.config import CurationConfig
from omnitrace_core.curation import TokenVote, curate
from omnitrace_core.errors import InvalidInputError
from omnitrace_core.results import Citation, TracedAnswer, merge_located
from omnitrace_core.sources import SourceUnit

__all__ = ["FieldCitation", "JsonLeaf", "field_citations", "json_leaves"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WS = " \t\n\r"
_LITERALS: dict[str, bool | None] = {"true": True, "false": False, "null": None}


class FieldCitation(BaseModel):
    """One leaf field of a structured reply and the sources its value was drawn from.

    Attributes:
        path: JSON path of the field: ``name``, ``address.city``, ``items[0]``,
            ``items[1].city``, ``["odd key"]`` (keys that are not identifiers are quoted);
            ``""`` for a reply that is a single scalar.
        value: The parsed value (a string unescaped, a number, a bool, None, or an empty
            object / array).
        char_start: Start of the value in the answer text (a string: after its opening quote).
        char_end: End of the value (a string: at its closing quote), so
            ``answer.text[char_start:char_end] == text``.
        text: The value as written in the JSON (a string's escapes kept).
        token_start: First generated token overlapping the span (``token_end`` when none).
        token_end: One past the last overlapping token.
        citations: The curated source units of the value's tokens, best first (same
            curation as a sentence's); empty when no token of the value voted for a source.
        confidence: Mean top-unit confidence of the value's tokens that mapped to a unit
            (0 when none did).
        grounded: False when the field has no citation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    value: Any
    char_start: int
    char_end: int
    text: str
    token_start: int
    token_end: int
    citations: list[Citation] = Field(default_factory=list)
    confidence: float = 0.0
    grounded: bool = False

    @property
    def source_ids(self) -> list[str]:
        """The cited source ids, best first, each once."""
        return list(dict.fromkeys(c.source_id for c in self.citations))


@dataclass(frozen=True)
class JsonLeaf:
    """A leaf value located in JSON text (see :func:`json_leaves`)."""

    path: str
    value: Any
    char_start: int
    char_end: int


def json_leaves(text: str, offset: int = 0) -> list[JsonLeaf]:
    """Every leaf value of the one JSON value in ``text[offset:]``, with its path and span.

    Leading and trailing whitespace is allowed; anything else after the value is not.

    Raises:
        InvalidInputError: the text is not one JSON value (with the position and what was
            expected there).
    """
    parser = _Parser(text)
    pos = parser.skip_ws(offset)
    pos = parser.value(pos, "")
    pos = parser.skip_ws(pos)
    if pos != len(text):
        parser.fail(pos, "end of the JSON value (extra text after it)")
    return parser.leaves


class _Parser:
    """A small JSON reader that records where each leaf value sits (``json`` does not say)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.leaves: list[JsonLeaf] = []

    def fail(self, pos: int, expected: str) -> None:
        got = repr(self.text[pos : pos + 12]) if pos < len(self.text) else "the end of the text"
        raise InvalidInputError(f"not a JSON reply: at character {pos} expected {expected}, got {got}")

    def skip_ws(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _WS:
            pos += 1
        return pos

    def value(self, pos: int, path: str) -> int:
        if pos >= len(self.text):
            self.fail(pos, "a JSON value")
        ch = self.text[pos]
        if ch == "{":
            return self.obj(pos, path)
        if ch == "[":
            return self.arr(pos, path)
        if ch == '"':
            end, value = self.string(pos)
            self.leaves.append(JsonLeaf(path, value, pos + 1, end - 1))
            return end
        for literal, constant in _LITERALS.items():
            if self.text.startswith(literal, pos):
                self.leaves.append(JsonLeaf(path, constant, pos, pos + len(literal)))
                return pos + len(literal)
        match = _NUMBER.match(self.text, pos)
        if match is None:
            self.fail(pos, "a JSON value")
        assert match is not None
        self.leaves.append(JsonLeaf(path, json.loads(match.group()), pos, match.end()))
        return match.end()

    def string(self, pos: int) -> tuple[int, str]:
        """End (after the closing quote) and decoded value of the string opening at ``pos``."""
        i = pos + 1
        while i < len(self.text):
            ch = self.text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                try:
                    return i + 1, str(json.loads(self.text[pos : i + 1]))
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(
                        f"not a JSON reply: bad string at character {pos}: {exc.msg}"
                    ) from exc
            i += 1
        self.fail(len(self.text), "the closing quote of the string opened at character " + str(pos))
        raise AssertionError("unreachable")

    def obj(self, pos: int, path: str) -> int:
        start = pos
        pos = self.skip_ws(pos + 1)
        if pos < len(self.text) and self.text[pos] == "}":
            self.leaves.append(JsonLeaf(path, {}, start, pos + 1))
            return pos + 1
        while True:
            if pos >= len(self.text) or self.text[pos] != '"':
                self.fail(pos, "a quoted key")
            pos, key = self.string(pos)
            pos = self.skip_ws(pos)
            if pos >= len(self.text) or self.text[pos] != ":":
                self.fail(pos, "':'")
            pos = self.value(self.skip_ws(pos + 1), _join_key(path, key))
            pos = self.skip_ws(pos)
            if pos < len(self.text) and self.text[pos] == ",":
                pos = self.skip_ws(pos + 1)
                continue
            if pos < len(self.text) and self.text[pos] == "}":
                return pos + 1
            self.fail(pos, "',' or '}'")

    def arr(self, pos: int, path: str) -> int:
        start = pos
        pos = self.skip_ws(pos + 1)
        if pos < len(self.text) and self.text[pos] == "]":
            self.leaves.append(JsonLeaf(path, [], start, pos + 1))
            return pos + 1
        index = 0
        while True:
            pos = self.skip_ws(self.value(pos, f"{path}[{index}]"))
            index += 1
            if pos < len(self.text) and self.text[pos] == ",":
                pos = self.skip_ws(pos + 1)
                continue
            if pos < len(self.text) and self.text[pos] == "]":
                return pos + 1
            self.fail(pos, "',' or ']'")


def _join_key(path: str, key: str) -> str:
    if _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def field_citations(answer: TracedAnswer, curation: CurationConfig | None = None) -> list[FieldCitation]:
    """The per-field view of a structured (JSON) answer's attribution.

    Args:
        answer: A traced answer whose text is one JSON value (what structured output decodes
            under a grammar; surrounding whitespace is allowed).
        curation: How a field's token votes become citations; default: the curation the answer
            was made with (``answer.config["curation"]``), else the defaults.

    Returns:
        One :class:`FieldCitation` per leaf field, in the order the fields appear in the text.

    Raises:
        InvalidInputError: the answer text is not one JSON value (e.g. a reply cut by the token
            limit), naming the position.
    """
    leaves = json_leaves(answer.text)
    if curation is None:
        stored = answer.config.get("curation") if isinstance(answer.config, dict) else None
        curation = CurationConfig.model_validate(stored) if isinstance(stored, dict) else CurationConfig()
    units: list[SourceUnit] = [u for s in answer.sources for u in s.units]
    unit_index = {u.unit_id: i for i, u in enumerate(units)}
    infos = {s.id: s for s in answer.sources}
    out: list[FieldCitation] = []
    for leaf in leaves:
        toks = [t for t in answer.tokens if _overlaps(t.char_start, t.char_end, leaf)]
        first = toks[0].index if toks else len(answer.tokens)
        last = toks[-1].index + 1 if toks else first
        votes = [TokenVote(_unit(unit_index, t.unit_id), t.confidence, t.pos or "X") for t in toks]
        chosen = curate(votes, curation) if units else []
        citations = merge_located(
            [Citation.of_unit(units[i], infos[units[i].source_id], score) for i, score in chosen]
        )
        mapped = [t.confidence for t in toks if _unit(unit_index, t.unit_id) >= 0]
        out.append(
            FieldCitation(
                path=leaf.path,
                value=leaf.value,
                char_start=leaf.char_start,
                char_end=leaf.char_end,
                text=answer.text[leaf.char_start : leaf.char_end],
                token_start=first,
                token_end=last,
                citations=citations,
                confidence=sum(mapped) / len(mapped) if mapped else 0.0,
                grounded=bool(citations),
            )
        )
    return out


def _overlaps(start: int, end: int, leaf: JsonLeaf) -> bool:
    """A non-empty token span that shares a character with the leaf's value."""
    return end > start and end > leaf.char_start and start < leaf.char_end


def _unit(index: dict[str, int], unit_id: str | None) -> int:
    return index.get(unit_id, -1) if unit_id is not None else -1
