"""A framework-free grounding verdict per sentence: supported / weak / unsupported.

Framework-free (pydantic and the core's results only); the LangChain
``omnitrace_integrations.langchain.GroundingCheck`` runnable is a thin layer over it, and any
agent framework can call :func:`assess_grounding` directly.

Two signals, both per answer sentence:

``attention``
    How much of the sentence's attention reached any source, *relative to the answer*:
    the POS-weighted mean of its tokens' ``source_fraction`` divided by a position-aware
    reference (the mean over the answer's tokens up to and including the sentence). A raw
    share falls as the answer grows (later tokens attend more to the answer itself), so a
    raw threshold would mostly flag late sentences; the ratio removes that trend. Clipped to
    ``[0, 2]`` and halved, so 0.5 means "as source-bound as the answer so far".
``similarity``
    Content-word overlap of the sentence with its best source unit (the share of the
    sentence's content words, lower-cased and crudely stemmed, found in the unit). Entities
    and numbers survive paraphrase, so a paraphrase keeps a moderate overlap while an
    invented claim about a known entity shares little more than the entity's name.

``score = attention_weight * attention + (1 - attention_weight) * similarity``; a sentence
with no curated citation is ``unsupported`` whatever its score. Labels:
``score >= supported_min`` -> supported, ``>= weak_min`` -> weak, else unsupported.

Defaults and why (measured on ``tests/langchain/data/grounding_dev.jsonl``, forced responses
mixing extractive, paraphrased and unsupported sentences; see ``docs/langchain.md``):
``attention_weight`` 0.25 and ``weak_min`` 0.55 (the unsupported boundary): on SmolLM2-135M the
position-normalised attention alone barely separates the classes (mean 0.48 unsupported vs
0.50 supported; unsupported F1 0.60 at its best threshold, about what flagging everything
scores), similarity carries the signal (0.32 vs 0.74), and adding a quarter of attention lifts
unsupported F1 from 0.894 (similarity alone, best threshold) to 0.894-0.905 around 0.55-0.57.
0.55 is the rounder, slightly more conservative choice (precision 0.87, recall 0.92, F1 0.89).
``supported_min`` 0.7 marks the band 0.55-0.7 as ``weak``: worth a look, not a retry. These
were tuned and reported on the same 144 sentences, so treat them as a starting point.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from omnitrace_core.config import GroundingThresholds
from omnitrace_core.results import SentenceAttribution, TracedAnswer

Label = Literal["supported", "weak", "unsupported"]

_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "they",
        "them",
        "he",
        "she",
        "his",
        "her",
        "we",
        "our",
        "you",
        "your",
        "i",
        "me",
        "my",
        "not",
        "no",
        "so",
        "than",
        "then",
        "also",
        "too",
        "very",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "done",
        "into",
        "over",
        "under",
        "about",
        "after",
        "before",
        "during",
        "while",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "each",
        "every",
        "some",
        "such",
        "only",
        "own",
        "same",
        "other",
        "more",
        "most",
        "few",
        "many",
        "much",
        "one",
        "two",
        "per",
        "via",
        "up",
        "down",
        "out",
    ]
)
_WORD = re.compile(r"[A-Za-z0-9]+")


def content_words(text: str) -> set[str]:
    """Lower-cased, crudely stemmed content words (no stop words, numbers kept)."""
    out: set[str] = set()
    for w in _WORD.findall(text.lower()):
        if w in _STOPWORDS or (len(w) < 3 and not w.isdigit()):
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(w) > len(suffix) + 3 and w.endswith(suffix):
                w = w[: -len(suffix)]
                break
        out.add(w)
    return out


class SentenceVerdict(BaseModel):
    """The verdict on one answer sentence.

    Attributes:
        index: Sentence index in the answer.
        text: The sentence.
        char_start: Start offset in the answer.
        char_end: End offset in the answer.
        label: ``supported``, ``weak`` or ``unsupported``.
        score: The combined score (0..1).
        attention: Position-normalised source attention (0..1, 0.5 = answer average).
        similarity: Content-word overlap with the best source unit (0..1).
        best_source: The source id of that unit.
        cited: The curated citations' source ids.
    """

    model_config = ConfigDict(frozen=True)

    index: int
    text: str
    char_start: int
    char_end: int
    label: Label
    score: float
    attention: float
    similarity: float
    best_source: str | None
    cited: list[str]


class GroundingVerdict(BaseModel):
    """The verdict on a whole answer."""

    model_config = ConfigDict(frozen=True)

    sentences: list[SentenceVerdict]
    thresholds: GroundingThresholds

    @property
    def unsupported(self) -> list[SentenceVerdict]:
        """Sentences judged unsupported."""
        return [s for s in self.sentences if s.label == "unsupported"]

    @property
    def weak(self) -> list[SentenceVerdict]:
        """Sentences judged weakly supported."""
        return [s for s in self.sentences if s.label == "weak"]

    @property
    def grounded(self) -> bool:
        """True when no sentence is unsupported."""
        return not self.unsupported

    @property
    def score(self) -> float:
        """Mean sentence score (1.0 for an empty answer)."""
        return sum(s.score for s in self.sentences) / len(self.sentences) if self.sentences else 1.0


_POS_WEIGHT = {"NOUN": 1.0, "PROPN": 1.0, "NUM": 1.0, "VERB": 0.9, "ADJ": 0.8, "ADV": 0.5}


def _attention(answer: TracedAnswer, sentence: SentenceAttribution) -> float:
    tokens = answer.tokens
    if not tokens or sentence.token_end <= sentence.token_start:
        return 0.5
    span = tokens[sentence.token_start : sentence.token_end]
    weights = [_POS_WEIGHT.get(t.pos or "", 0.3) for t in span]
    if sum(weights) <= 0:
        weights = [1.0] * len(span)
    own = sum(w * t.source_fraction for w, t in zip(weights, span, strict=True)) / sum(weights)
    upto = tokens[: sentence.token_end]
    reference = sum(t.source_fraction for t in upto) / len(upto)
    if reference <= 1e-9:
        return 0.5
    return min(2.0, own / reference) / 2.0


def _similarity(answer: TracedAnswer, text: str) -> tuple[float, str | None]:
    words = content_words(text)
    if not words:
        return 1.0, None
    best, best_id = 0.0, None
    for source in answer.sources:
        for unit in source.units:
            overlap = len(words & content_words(unit.text)) / len(words)
            if overlap > best:
                best, best_id = overlap, source.id
    return best, best_id


def _answer_thresholds(answer: TracedAnswer) -> GroundingThresholds:
    raw = answer.config.get("grounding") if isinstance(answer.config, dict) else None
    if raw:
        try:
            return GroundingThresholds.model_validate(raw)
        except ValueError:
            pass  # an answer edited by hand: fall back to the documented defaults
    return GroundingThresholds()


def assess_grounding(answer: TracedAnswer, thresholds: GroundingThresholds | None = None) -> GroundingVerdict:
    """Judge each sentence of a traced answer: supported, weak or unsupported.

    Args:
        answer: A result of ``Tracer.generate`` / ``stream`` / ``attribute``.
        thresholds: Thresholds and weights. ``None``: the ones the answer's tracer config
            carries (a calibrated model's, chosen on its calibration data), else the library
            defaults documented on :class:`GroundingThresholds`.

    Returns:
        The per-sentence verdicts.
    """
    th = thresholds or _answer_thresholds(answer)
    verdicts: list[SentenceVerdict] = []
    for s in answer.sentences:
        attention = _attention(answer, s)
        similarity, best = _similarity(answer, s.text)
        score = th.attention_weight * attention + (1 - th.attention_weight) * similarity
        cited = [c.source_id for c in s.citations]
        if len(content_words(s.text)) < th.min_content_words:
            label: Label = "supported"
        elif not cited:
            label = "unsupported"
        elif score >= th.supported_min:
            label = "supported"
        elif score >= th.weak_min:
            label = "weak"
        else:
            label = "unsupported"
        verdicts.append(
            SentenceVerdict(
                index=s.index,
                text=s.text,
                char_start=s.char_start,
                char_end=s.char_end,
                label=label,
                score=round(score, 6),
                attention=round(attention, 6),
                similarity=round(similarity, 6),
                best_source=best,
                cited=cited,
            )
        )
    return GroundingVerdict(sentences=verdicts, thresholds=th)
