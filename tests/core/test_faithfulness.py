"""Log-prob drops: per-sentence baseline/ablation bookkeeping, grouping, random controls, packaged model."""

from __future__ import annotations

import json

import pytest

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.evaluation.faithfulness import (
    logp_drops,
    logp_drops_many,
    prompt_ids,
    random_removals,
    response_tokens,
    text_sources,
    token_logprobs,
    token_sentence_index,
)

ROW = {
    "id": "row-1",
    "question": "How tall is the lighthouse?",
    "sources": [
        {"id": "doc1", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls."},
        {"id": "doc2", "title": "Lighthouse", "text": "The lighthouse stands 42 metres tall."},
        {"id": "doc3", "text": "Its keeper lit the lamp every night."},
    ],
}
TEXT = "The lighthouse stands 42 metres tall. Its keeper lit the lamp."
SPANS = [(0, 37), (38, 62)]


def test_token_sentence_index_uses_last_character():
    # " The" starts on the space between sentences but its word is in sentence 1.
    offsets = [(0, 3), (3, 9), (9, 10), (10, 14), (14, 20), (20, 21), (21, 23)]
    spans = [(0, 10), (11, 21)]
    assert token_sentence_index(offsets, spans) == [0, 0, 0, 1, 1, 1, -1]
    assert token_sentence_index([(4, 4)], spans) == [-1]  # empty token belongs nowhere


def test_response_tokens_offsets_are_monotonic(tiny_tokenizer):
    ids, offsets = response_tokens(tiny_tokenizer, TEXT)
    assert len(ids) == len(offsets) > 5
    assert all(a <= b for a, b in offsets)
    assert all(offsets[k][0] >= offsets[k - 1][1] for k in range(1, len(offsets)))
    assert tiny_tokenizer.decode(ids) == TEXT


def test_random_removals_seeded_and_checked():
    ids = ["doc1", "doc2", "doc3"]
    first = random_removals(ids, 2, 4, seed="row-1")
    assert first == random_removals(ids, 2, 4, seed="row-1")
    assert len(first) == 4 and all(len(set(r)) == 2 and set(r) <= set(ids) for r in first)
    assert random_removals(ids, 0, 2, seed=1) == [[], []]
    with pytest.raises(InvalidInputError, match="k=4"):
        random_removals(ids, 4, 1, seed=0)


def test_drops_match_direct_computation_and_group_forwards(tiny_tracer):
    base = token_logprobs(tiny_tracer, prompt_ids(tiny_tracer, text_sources(ROW), ROW["question"]),
                          response_tokens(tiny_tracer.tokenizer, TEXT)[0])
    kept = [s for s in text_sources(ROW) if s.id != "doc2"]
    ablated = token_logprobs(tiny_tracer, prompt_ids(tiny_tracer, kept, ROW["question"]),
                             response_tokens(tiny_tracer.tokenizer, TEXT)[0])
    owner = token_sentence_index(response_tokens(tiny_tracer.tokenizer, TEXT)[1], SPANS)
    expected = [float(sum(base[k] - ablated[k] for k, o in enumerate(owner) if o == i)) for i in range(2)]

    drops, passes = logp_drops(tiny_tracer, ROW, TEXT, SPANS, [["doc2"], ["doc2"]])
    assert passes == 2  # one full-prompt forward + one shared by both sentences (same removed set)
    assert drops == pytest.approx(expected, abs=1e-4)
    assert any(abs(d) > 1e-6 for d in drops)

    drops2, passes2 = logp_drops(tiny_tracer, ROW, TEXT, SPANS, [["doc2"], ["doc3", "doc1"]])
    assert passes2 == 3 and drops2[0] == pytest.approx(drops[0], abs=1e-4)


def test_many_plans_share_forwards(tiny_tracer):
    plans = {"a": [["doc2"], ["doc3"]], "b": [["doc2"], ["doc1"]], "none": [[], []]}
    drops, passes = logp_drops_many(tiny_tracer, ROW, TEXT, SPANS, plans)
    assert passes == 4  # full prompt + {doc2}, {doc3}, {doc1}
    single, _ = logp_drops(tiny_tracer, ROW, TEXT, SPANS, plans["b"])
    assert drops["b"] == pytest.approx(single, abs=1e-4)
    assert drops["a"][0] == pytest.approx(drops["b"][0]) and drops["none"] == [0.0, 0.0]
    with pytest.raises(InvalidInputError, match=r"^b: removed"):
        logp_drops_many(tiny_tracer, ROW, TEXT, SPANS, {"a": plans["a"], "b": [["doc1"]]})


def test_nothing_removed_costs_nothing_and_all_removed_works(tiny_tracer):
    assert logp_drops(tiny_tracer, ROW, TEXT, SPANS, [[], []]) == ([0.0, 0.0], 0)
    drops, passes = logp_drops(tiny_tracer, ROW, TEXT, SPANS, [["doc1", "doc2", "doc3"], []])
    assert passes == 2 and drops[1] == 0.0 and drops[0] != 0.0


def test_bad_inputs_are_named(tiny_tracer):
    with pytest.raises(InvalidInputError, match="removed has 1 entries"):
        logp_drops(tiny_tracer, ROW, TEXT, SPANS, [["doc1"]])
    with pytest.raises(InvalidInputError, match="doc9"):
        logp_drops(tiny_tracer, ROW, TEXT, SPANS, [["doc9"], []])
    with pytest.raises(InvalidInputError, match=r"sentence 1 span \(38, 99\)"):
        logp_drops(tiny_tracer, ROW, TEXT, [(0, 37), (38, 99)], [[], []])


@pytest.mark.model
def test_removing_the_gold_source_hurts_more_than_another(default_tracer, bench_dir):
    rows = [json.loads(line) for line in (bench_dir / "dev.jsonl").read_text().splitlines() if line.strip()]
    row = next(r for r in rows if r["task"] == "teacher_forced")
    spans = [(s["start"], s["end"]) for s in row["response_sentences"]]
    ids = [s["id"] for s in row["sources"]]
    gold = [s["gold_sources"] for s in row["response_sentences"]]
    other = [[next(i for i in ids if i not in g)] for g in gold]
    drops, passes = logp_drops_many(default_tracer, row, row["response"], spans, {"gold": gold, "other": other})
    gold_drops, other_drops = drops["gold"], drops["other"]
    assert passes <= 1 + 2 * len(spans)
    assert all(g > o + 5.0 for g, o in zip(gold_drops, other_drops, strict=True))
