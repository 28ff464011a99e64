"""One factory for hand-built result objects in tests (re-exported by ``tests/conftest.py``).

Import it as ``from tests.factories import make_answer`` (or ``from tests.conftest import
make_answer``). Every builder fills the fields a test rarely cares about and leaves every field
overridable, so a test spells out only the values it checks:

* :func:`make_unit` -- a :class:`SourceUnit` (whole text of a source unless told otherwise).
* :func:`make_source_info` -- a :class:`SourceInfo` (one whole-text unit unless ``units``).
* :func:`make_citation` -- a :class:`Citation` (``unit_id`` = ``source_id``, span from ``cited_text``).
* :func:`make_token` -- a :class:`TokenAttribution`.
* :func:`make_sentence` -- a :class:`SentenceAttribution` (span, token span, mass and
  ``grounded`` derived from its text and citations).
* :func:`make_answer` -- a :class:`TracedAnswer` laid out from sentence specs, with character
  and token spans computed from the text.

Conventions: one token per word (a run of non-space characters); a sentence's tokens start where
the previous sentence's end; ``finish_reason`` is ``"stop"`` for ``mode="generate"`` and None for
``mode="attribute"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import accumulate
from types import EllipsisType
from typing import Any, Literal

from omnitrace_core.results import Citation, SentenceAttribution, SourceInfo, TokenAttribution, TracedAnswer
from omnitrace_core.sources import SourceUnit

__all__ = [
    "CitationSpec",
    "SentenceSpec",
    "SourcesSpec",
    "make_answer",
    "make_citation",
    "make_sentence",
    "make_source_info",
    "make_token",
    "make_unit",
]

CitationSpec = Citation | tuple[str, float]
"""A citation: a :class:`Citation`, or ``(source_id, score)``."""

SentenceSpec = (
    SentenceAttribution
    | tuple[str, Sequence[CitationSpec]]
    | tuple[str, Sequence[CitationSpec], Mapping[str, Any]]
)
"""A sentence for :func:`make_answer`: a ready :class:`SentenceAttribution` (kept as is), or
``(text, citations)`` / ``(text, citations, fields)`` where ``fields`` overrides
:func:`make_sentence` keywords (``source_mass``, ``token_start``, ...) and may hold
``token_units``: the unit id of each word token (with ``tokens="words"``)."""

SourcesSpec = Mapping[str, str] | Sequence[Any]
"""Sources for :func:`make_answer`: ``{id: text}``, or a list of :class:`SourceInfo` and
source-like objects (``TextSource`` and the like: ``id`` plus optional ``text``, ``title``,
``url``, ``metadata``, ``modality``), each made one whole-text unit."""

_WORD = re.compile(r"\S+")


def make_unit(
    source_id: str,
    text: str = "",
    *,
    index: int = 0,
    unit_id: str | None = None,
    char_start: int = 0,
    char_end: int | None = None,
    **fields: Any,
) -> SourceUnit:
    """A source unit; by default the whole ``text`` of ``source_id`` as its only unit.

    Args:
        source_id: The unit's source.
        text: The unit's text.
        index: Position among the source's units.
        unit_id: Defaults to ``source_id`` (an unsplit source).
        char_start: Start of ``text`` in the source.
        char_end: Defaults to ``char_start + len(text)``.
        **fields: Any other :class:`SourceUnit` field (``token_start``, ``modality``,
            ``seconds``, ``box``, ...).
    """
    return SourceUnit(
        index=index, text=text, **_place(source_id, unit_id, text, char_start, char_end), **fields
    )


def make_source_info(
    id: str,
    text: str = "",
    *,
    title: str | None = None,
    url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    units: Sequence[SourceUnit] | None = None,
    modality: str = "text",
) -> SourceInfo:
    """A source as the per-source view sees it.

    Args:
        id: The source id.
        text: The source's text (the one unit's text when ``units`` is not given).
        title, url, metadata, modality: As on :class:`SourceInfo` (``metadata`` is copied).
        units: The source's units; defaults to one unit holding all of ``text``
            (``unit_id`` = ``id``).
    """
    return SourceInfo(
        id=id,
        title=title,
        url=url,
        modality=modality,  # type: ignore[arg-type]
        metadata=dict(metadata or {}),
        units=[make_unit(id, text)] if units is None else list(units),
    )


def make_citation(
    source_id: str,
    score: float = 1.0,
    cited_text: str = "",
    *,
    unit_id: str | None = None,
    char_start: int = 0,
    char_end: int | None = None,
    **fields: Any,
) -> Citation:
    """A citation of ``source_id``.

    Args:
        source_id: The cited source.
        score: The citation's score.
        cited_text: The cited unit's text.
        unit_id: Defaults to ``source_id`` (an unsplit source).
        char_start: Start of ``cited_text`` in the source.
        char_end: Defaults to ``char_start + len(cited_text)``.
        **fields: Any other :class:`Citation` field (``title``, ``url``, ``metadata``,
            ``modality``, ``seconds``, ``boxes``).
    """
    return Citation(
        score=score,
        cited_text=cited_text,
        **_place(source_id, unit_id, cited_text, char_start, char_end),
        **fields,
    )


def make_token(
    index: int,
    token: str,
    char_start: int,
    unit_id: str | None = None,
    *,
    source_id: str | EllipsisType | None = ...,
    char_end: int | None = None,
    confidence: float = 0.8,
    pos: str | None = "NOUN",
    source_fraction: float = 0.0,
) -> TokenAttribution:
    """A generated token attributed to ``unit_id``.

    Args:
        index: The token's index in the answer.
        token: Its text.
        char_start: Its start in the answer text; ``char_end`` defaults to ``char_start + len(token)``.
        unit_id: Its top unit (None: attributed to nothing).
        source_id: Defaults to ``unit_id`` (an unsplit source).
        confidence, pos, source_fraction: As on :class:`TokenAttribution`.
    """
    return TokenAttribution(
        index=index,
        token=token,
        **_span(token, char_start, char_end),
        unit_id=unit_id,
        source_id=unit_id if source_id is ... else source_id,
        confidence=confidence,
        pos=pos,
        source_fraction=source_fraction,
    )


def make_sentence(
    index: int,
    text: str,
    char_start: int = 0,
    citations: Sequence[CitationSpec] = (),
    *,
    char_end: int | None = None,
    token_start: int = 0,
    token_end: int | None = None,
    source_mass: Mapping[str, float] | None = None,
    grounded: bool | None = None,
) -> SentenceAttribution:
    """An answer sentence.

    Args:
        index: The sentence's index in the answer.
        text: Its text.
        char_start: Its start in the answer; ``char_end`` defaults to ``char_start + len(text)``.
        citations: :class:`Citation` objects or ``(source_id, score)`` pairs (made with
            :func:`make_citation`).
        token_start: Its first token; ``token_end`` defaults to one token per word.
        source_mass: Defaults to the citations' scores summed by source.
        grounded: Defaults to whether anything is cited.
    """
    cites = [_citation(c) for c in citations]
    if source_mass is None:
        mass: dict[str, float] = {}
        for c in cites:
            mass[c.source_id] = mass.get(c.source_id, 0.0) + c.score
    else:
        mass = dict(source_mass)
    return SentenceAttribution(
        index=index,
        text=text,
        **_span(text, char_start, char_end),
        token_start=token_start,
        token_end=token_start + len(_WORD.findall(text)) if token_end is None else token_end,
        citations=cites,
        source_mass=mass,
        grounded=bool(cites) if grounded is None else grounded,
    )


def make_answer(
    sentences: Sequence[SentenceSpec] = (),
    *,
    text: str | None = None,
    sources: SourcesSpec = (),
    separator: str = " ",
    tokens: Sequence[TokenAttribution] | Literal["words"] = (),
    token_fields: Mapping[str, Any] | None = None,
    mode: Literal["generate", "attribute"] = "generate",
    model: str = "fake-model",
    signal: str = "attmean",
    prompt_tokens: int = 10,
    generated_tokens: int | None = None,
    finish_reason: Literal["stop", "length"] | EllipsisType | None = ...,
    config: Mapping[str, Any] | None = None,
    errors: Sequence[str] | None = None,
    timings: Mapping[str, float] | None = None,
) -> TracedAnswer:
    """A whole answer, laid out from its sentences.

    ``make_answer([("Paris is in France.", [("doc1", 0.9)])], sources={"doc1": "..."})``

    Args:
        sentences: :data:`SentenceSpec` items. A spec ``(text, citations[, fields])`` becomes
            the next sentence: its character span is where it stands in the answer text (when
            ``text`` is given, searched from the end of the previous sentence), its tokens
            follow the previous sentence's (one per word). A ``(source_id, score)`` citation of a source given in
            ``sources`` cites that source's first unit, with its title, url and metadata; of an
            unknown source, the bare id (no text). A :class:`SentenceAttribution` is kept as is.
        text: The answer text; defaults to the sentences joined by ``separator``. It may hold
            more than the sentences (trailing text no sentence covers).
        sources: :data:`SourcesSpec`; the answer's ``sources`` (and what pairs cite).
        tokens: Explicit tokens, or ``"words"``: one :func:`make_token` per word of each spec
            sentence, attributed to the spec's ``token_units`` (one per word) or else to its
            first citation's unit (None when nothing is cited).
        token_fields: Extra :func:`make_token` keywords for ``"words"`` tokens
            (e.g. ``{"source_fraction": 0.5}``).
        generated_tokens: Defaults to the number of tokens, or else the last sentence's
            ``token_end``.
        finish_reason: Defaults to ``"stop"`` for ``mode="generate"``, None for ``"attribute"``.
        mode, model, signal, prompt_tokens, config, errors, timings: As on :class:`TracedAnswer`.
    """
    infos = _source_infos(sources)
    by_id = {info.id: info for info in infos}
    texts = [s.text if isinstance(s, SentenceAttribution) else s[0] for s in sentences]
    starts: list[int] | None = None  # where each sentence stands when the text is laid out here
    if text is None:
        text = separator.join(texts)
        starts = list(accumulate((len(t) + len(separator) for t in texts[:-1]), initial=0))
    words = tokens == "words"
    token_list: list[TokenAttribution] = [] if words else list(tokens)  # type: ignore[arg-type]
    built: list[SentenceAttribution] = []
    char_pos = token_pos = 0
    for k, spec in enumerate(sentences):
        if isinstance(spec, SentenceAttribution):
            sentence = spec
        else:
            sentence_text, cites = spec[0], [_resolve(c, by_id) for c in spec[1]]
            fields = dict(spec[2]) if len(spec) > 2 else {}  # type: ignore[misc]
            units = fields.pop("token_units", None)
            start = starts[k] if starts is not None else text.find(sentence_text, char_pos)
            if start < 0:
                raise ValueError(f"sentence {sentence_text!r} is not in the answer text after {char_pos}")
            fields.setdefault("token_start", len(token_list) if words else token_pos)
            sentence = make_sentence(fields.pop("index", k), sentence_text, start, cites, **fields)
            if words:
                spans = list(_WORD.finditer(sentence_text))
                if units is not None:  # one unit per word; its source is the unit's id
                    owners = [(u, u) for u in units]
                else:  # every word to the first citation
                    first = (cites[0].unit_id, cites[0].source_id) if cites else (None, None)
                    owners = [first] * len(spans)
                for m, (unit_id, source_id) in zip(spans, owners, strict=True):
                    token_list.append(
                        make_token(
                            len(token_list),
                            m.group(),
                            start + m.start(),
                            unit_id,
                            source_id=source_id,
                            **dict(token_fields or {}),
                        )
                    )
        built.append(sentence)
        char_pos, token_pos = sentence.char_end, sentence.token_end
    if generated_tokens is None:
        generated_tokens = len(token_list) if token_list else token_pos
    return TracedAnswer(
        text=text,
        sentences=built,
        tokens=token_list,
        sources=infos,
        model=model,
        signal=signal,
        mode=mode,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        finish_reason=("stop" if mode == "generate" else None) if finish_reason is ... else finish_reason,
        config=dict(config or {}),
        errors=list(errors or []),
        timings=dict(timings or {}),
    )


def _place(
    source_id: str, unit_id: str | None, text: str, char_start: int, char_end: int | None
) -> dict[str, Any]:
    """What a unit and a citation share: the ids (an unsplit source's unit is the source) and
    the span of ``text`` in the source."""
    return {
        "source_id": source_id,
        "unit_id": source_id if unit_id is None else unit_id,
        **_span(text, char_start, char_end),
    }


def _span(text: str, char_start: int, char_end: int | None) -> dict[str, int]:
    """Where ``text`` stands: from ``char_start`` to ``char_end`` (default: its length on)."""
    return {"char_start": char_start, "char_end": char_start + len(text) if char_end is None else char_end}


def _citation(spec: CitationSpec) -> Citation:
    return spec if isinstance(spec, Citation) else make_citation(spec[0], spec[1])


def _resolve(spec: CitationSpec, by_id: Mapping[str, SourceInfo]) -> Citation:
    """A ``(source_id, score)`` pair cites the known source's first unit (else the bare id)."""
    if isinstance(spec, Citation) or spec[0] not in by_id:
        return _citation(spec)
    info = by_id[spec[0]]
    unit = info.units[0]
    return make_citation(
        info.id,
        spec[1],
        unit.text,
        unit_id=unit.unit_id,
        char_start=unit.char_start,
        char_end=unit.char_end,
        title=info.title,
        url=info.url,
        metadata=dict(info.metadata),
    )


def _source_infos(sources: SourcesSpec) -> list[SourceInfo]:
    if isinstance(sources, Mapping):
        return [make_source_info(sid, text) for sid, text in sources.items()]
    return [
        s
        if isinstance(s, SourceInfo)
        else make_source_info(
            s.id,
            getattr(s, "text", None) or "",
            title=getattr(s, "title", None),
            url=getattr(s, "url", None),
            metadata=getattr(s, "metadata", None),
            modality=getattr(s, "modality", "text"),
        )
        for s in sources
    ]
