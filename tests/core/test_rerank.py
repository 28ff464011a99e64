"""Attention x similarity re-ranking: the rule, its knobs, and whole answers (fake embedder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from omnitrace_core.config import ConfigError, TracerConfig
from omnitrace_core.rerank import (
    RerankConfig,
    _MiniLM,
    combine,
    rerank_answer,
    rerank_sentence,
    sentence_votes,
    similarities,
)
from omnitrace_core.results import TracedAnswer
from tests.factories import make_answer, make_citation, make_source_info, make_unit

ROOT = Path(__file__).resolve().parents[2]
# Every knob explicit, so these tests do not move when the tuned defaults do.
BASE = RerankConfig(top_m=None, attention_weight=1.0, similarity_weight=1.0, vote_smoothing=0.05,
                    similarity_floor=0.0, min_relative=0.5, unsupported_similarity=None, diffuse_top_vote=1.0)


def cfg(**knobs) -> RerankConfig:
    return RerankConfig(**{**BASE.model_dump(), **knobs})


# A toy "meaning" space: each axis is a concept, and several words express it.
CONCEPTS = [
    {"water", "filters", "purify", "drinking"},
    {"drone", "motors", "engines", "aircraft"},
    {"lighthouse", "tall", "metres", "beacon"},
    {"founded", "1905", "century", "since"},
]


def concept_embedder(texts):
    """Bag of concepts (plus a tiny constant so no vector is zero)."""
    out = []
    for text in texts:
        words = {w.strip(".,").lower() for w in text.split()}
        out.append([float(len(words & c)) for c in CONCEPTS] + [0.05])
    return out


UNITS = [
    make_unit("doc1", "Valbrook Works makes water filters."),
    make_unit("doc2", "Harlow Labs makes drone motors."),
    make_unit("doc3", "The Merrow lighthouse is 42 metres tall."),
]


# ---------------------------------------------------------------- combine (the pure rule)


def test_attention_only_reproduces_the_vote_ranking():
    config = cfg(similarity_weight=0.0, vote_smoothing=0.0, min_relative=0.5)
    cited = combine(["a", "b", "c"], {"a": 0.6, "b": 0.35, "c": 0.05}, [0.1, 0.9, 0.9], config)
    assert [u for u, _ in cited] == ["a", "b"]
    assert cited[0][1] > cited[1][1]


def test_similarity_breaks_a_diffuse_attention_tie():
    # Attention barely prefers the wrong unit; meaning clearly points at "b".
    config = cfg(min_relative=0.7)
    cited = combine(["a", "b", "c"], {"a": 0.36, "b": 0.34, "c": 0.30}, [0.2, 0.8, 0.1], config)
    assert [u for u, _ in cited] == ["b"]


def test_top_m_lets_attention_propose_and_smoothing_lets_meaning_rescue():
    votes, sims = {"a": 0.9, "b": 0.1}, [0.1, 0.1, 0.95]
    only_attended = combine(["a", "b", "c"], votes, sims, cfg(top_m=2, min_relative=0.1))
    assert "c" not in {u for u, _ in only_attended}  # outside the top 2 by attention: never cited
    rescued = combine(["a", "b", "c"], votes, sims, cfg(attention_weight=0.5, vote_smoothing=0.2,
                                                                 similarity_weight=4.0, min_relative=0.9))
    assert [u for u, _ in rescued] == ["c"]  # no vote at all, but by far the closest in meaning


def test_similarity_floor_vetoes_attended_units():
    config = cfg(similarity_floor=0.3, min_relative=0.1)
    cited = combine(["a", "b"], {"a": 0.8, "b": 0.2}, [0.25, 0.6], config)
    assert [u for u, _ in cited] == ["b"]


def test_unsupported_needs_low_similarity_and_diffuse_attention():
    config = cfg(unsupported_similarity=0.4, diffuse_top_vote=0.6)
    low = [0.2, 0.3, 0.1]
    assert combine(["a", "b", "c"], {"a": 0.4, "b": 0.35, "c": 0.25}, low, config) == []
    # Attention concentrated on one unit: the sentence stays grounded despite low similarity.
    assert [u for u, _ in combine(["a", "b", "c"], {"a": 0.9, "b": 0.1}, low, config)] == ["a"]
    # One unit similar enough: grounded.
    assert combine(["a", "b", "c"], {"a": 0.4, "b": 0.35, "c": 0.25}, [0.2, 0.5, 0.1], config)


def test_scores_are_normalised_and_capped():
    cited = combine(["a", "b", "c"], {"a": 0.4, "b": 0.35, "c": 0.25}, [0.5, 0.5, 0.5],
                    cfg(min_relative=0.0))
    assert sum(s for _, s in cited) == pytest.approx(1.0)
    capped = combine(["a", "b", "c"], {"a": 0.4, "b": 0.35, "c": 0.25}, [0.5, 0.5, 0.5],
                     cfg(min_relative=0.0, max_citations=1))
    assert [u for u, _ in capped] == ["a"]


def test_combine_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match="2 similarities for 3 units"):
        combine(["a", "b", "c"], {}, [0.1, 0.2], cfg())
    with pytest.raises(ValueError, match=r"'b': -0\.1"):
        combine(["a", "b"], {"b": -0.1}, [0.1, 0.2], cfg())
    assert combine([], {}, [], cfg()) == []


def test_config_is_frozen_and_validated():
    config = RerankConfig()
    with pytest.raises(ValidationError):
        config.top_m = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="min_relative"):
        RerankConfig(min_relative=1.5)
    with pytest.raises(ConfigError, match="unknown_knob"):
        RerankConfig(unknown_knob=1)  # type: ignore[call-arg]


def test_defaults_are_the_dev_tuned_selection():
    tuned = json.loads((ROOT / "benchmarks" / "results" / "rerank_tune.json").read_text())["selected"]
    assert RerankConfig() == RerankConfig.model_validate(tuned)


# ---------------------------------------------------------------- one sentence, with an embedder


def test_rerank_sentence_cites_by_meaning_when_attention_is_diffuse():
    votes = {"doc1": 0.3, "doc2": 0.4, "doc3": 0.3}
    cited = rerank_sentence("The firm purify drinking water.", UNITS, votes, cfg(min_relative=0.7),
                            embedder=concept_embedder)
    assert [u for u, _ in cited] == ["doc1"]


def test_rerank_sentence_rejects_votes_for_unknown_units():
    with pytest.raises(ValueError, match="doc9"):
        rerank_sentence("x", UNITS, {"doc9": 1.0}, cfg(), embedder=concept_embedder)


def test_similarities_checks_the_embedder_output():
    with pytest.raises(ValueError, match="one vector per text"):
        similarities(lambda texts: [[1.0, 0.0]], ["a", "b"], ["c"])
    sims = similarities(concept_embedder, ["water filters"], ["purify drinking", "drone motors"])
    assert sims.shape == (1, 2) and sims[0, 0] > sims[0, 1]


def test_default_embedder_names_the_extra_when_sentence_transformers_is_missing(monkeypatch):
    monkeypatch.setattr(_MiniLM, "_model", None)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"omnitrace-integrations\[examples\]"):
        _MiniLM()(["anything"])


# ---------------------------------------------------------------- whole answers


def _answer(sentences: list[tuple[str, str, list[str]]], errors: list[str] | None = None) -> TracedAnswer:
    """An answer whose tokens are its words, each attributed to the given unit."""
    return make_answer(
        [
            (sentence, [make_citation(cited)], {"source_mass": {cited: 0.7, "doc3": 0.3}, "token_units": units})
            for sentence, cited, units in sentences
        ],
        sources=[make_source_info(u.unit_id, title=u.unit_id.upper(), units=[u]) for u in UNITS],
        tokens="words",
        model="fake",
        mode="attribute",
        errors=errors,
    )


def test_sentence_votes_recompute_the_curation_votes_from_tokens():
    answer = _answer([("purify drinking water now", "doc2", ["doc2", "doc2", "doc1", "doc1"])])
    votes = sentence_votes(answer, answer.sentences[0])
    assert set(votes) == {"doc1", "doc2"}
    assert sum(votes.values()) == pytest.approx(1.0)


def test_rerank_answer_rewrites_citations_and_keeps_everything_else():
    answer = _answer([
        ("purify drinking water", "doc2", ["doc2", "doc1", "doc2"]),   # attention split, meaning: doc1
        ("drone engines aircraft", "doc2", ["doc2", "doc2", "doc2"]),  # both agree: doc2
        ("nothing here at all", "doc3", ["doc1", "doc2", "doc3", "doc1"]),  # diffuse and unrelated
    ])
    config = cfg(min_relative=0.7, unsupported_similarity=0.5, diffuse_top_vote=0.9)
    out = rerank_answer(answer, config, embedder=concept_embedder)
    assert [[c.source_id for c in s.citations] for s in out.sentences] == [["doc1"], ["doc2"], []]
    assert [s.grounded for s in out.sentences] == [True, True, False]
    assert out.text == answer.text and out.tokens == answer.tokens
    assert [s.source_mass for s in out.sentences] == [s.source_mass for s in answer.sentences]
    assert out.sentences[0].citations[0].title == "DOC1"
    assert out.config["rerank"]["min_relative"] == 0.7
    assert out.errors == []
    assert TracedAnswer.model_validate_json(out.model_dump_json()) == out


def test_rerank_answer_records_a_failure_and_keeps_the_answer():
    answer = _answer([("purify drinking water", "doc2", ["doc2", "doc1", "doc2"])], errors=["earlier"])

    def broken(texts):
        raise RuntimeError("embedding service down")

    out = rerank_answer(answer, cfg(), embedder=broken)
    assert out.text == answer.text and out.sentences == answer.sentences
    assert out.errors[0] == "earlier"
    assert "embedding service down" in out.errors[1]


@pytest.mark.model
def test_packaged_models_cite_a_sentence_that_only_describes_its_source(default_tracer):
    sources = [
        {"id": "doc1", "title": "Harlow Labs", "text": "Harlow Labs makes drone motors and employs 1994 people."},
        {"id": "doc2", "title": "Valbrook Works", "text": "Valbrook Works makes water filters and employs 405 people."},
        {"id": "doc3", "title": "Merrow lighthouse", "text": "The Merrow lighthouse stands 42 metres tall."},
    ]
    response = "The producer of cartridges that purify drinking supplies has a staff of about four hundred."
    answer = default_tracer.attribute(sources, "What do the sources say?", response)
    out = rerank_answer(answer, RerankConfig(similarity_floor=0.0, unsupported_similarity=None))
    assert out.errors == answer.errors
    assert [c.source_id for c in out.sentences[0].citations] == ["doc2"]
    assert out.sentences[0].source_mass == answer.sentences[0].source_mass


@pytest.mark.model
@pytest.mark.skipif("rerank" not in TracerConfig.model_fields,
                    reason="TracerConfig.rerank (the tracer hook) is not applied in this checkout")
def test_tracer_hook_equals_reranking_afterwards(default_tracer):
    row = json.loads((ROOT / "benchmarks" / "data" / "hard_dev.jsonl").read_text().splitlines()[1])
    config = RerankConfig()
    plain = default_tracer.attribute(row["sources"], row["question"], row["response"])
    hooked = default_tracer.attribute(row["sources"], row["question"], row["response"],
                                      config=default_tracer.config.model_copy(update={"rerank": config}))
    after = rerank_answer(plain, config)
    assert [[(c.source_id, round(c.score, 6)) for c in s.citations] for s in hooked.sentences] == [
        [(c.source_id, round(c.score, 6)) for c in s.citations] for s in after.sentences
    ]
    assert [s.grounded for s in hooked.sentences] == [s.grounded for s in after.sentences]
    assert hooked.config["rerank"] == config.model_dump(mode="json")
