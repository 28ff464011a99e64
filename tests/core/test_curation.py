"""Curation rules against hand-worked examples from the paper's definitions (Appendix A.1)."""

from __future__ import annotations

import pytest

from omnitrace_core.config import ConfigError, CurationConfig
from omnitrace_core.curation import TokenVote, curate, pos_weight, unit_votes

CFG = CurationConfig(min_relative=0.0)  # exactly the paper's rules (our extra knob off)


def test_paper_pos_weights():
    expected = {
        "NOUN": 1.0,
        "PROPN": 1.0,
        "NUM": 1.0,
        "VERB": 0.9,
        "ADJ": 0.8,
        "ADV": 0.5,
        "AUX": 0.1,
        "PRON": 0.1,
        "DET": 0.1,
        "ADP": 0.1,
        "CCONJ": 0.1,
        "SCONJ": 0.1,
        "PART": 0.1,
        "PUNCT": 0.0,
    }
    for tag, w in expected.items():
        assert pos_weight(tag, CFG) == w
    assert pos_weight("INTJ", CFG) == 0.3  # any other tag
    assert (CFG.gamma, CFG.alpha, CFG.run_min, CFG.p_min, CFG.coverage) == (2.0, 0.8, 0.10, 0.07, 0.85)


def test_worked_example_one_dominant_source():
    # "Valbrook Works is in 1905 ." -- by hand:
    # weights w*c^2: 0.81, 0.64, 0.025, 0.036, 0.49, 0 ; total 2.001
    # runs: [u0: 1.45 (72%) coherent], [u1: 0.025 (1.2%) -> x0.2 = 0.005],
    #       [u2: 0.036 (1.8%) -> x0.2 = 0.0072], [u0: 0.49 (24%) coherent]
    # votes: u0 1.94, u1 0.005, u2 0.0072 -> normalised u0 = 1.94 / 1.9522
    tokens = [
        TokenVote(0, 0.9, "PROPN"),
        TokenVote(0, 0.8, "PROPN"),
        TokenVote(1, 0.5, "AUX"),
        TokenVote(2, 0.6, "ADP"),
        TokenVote(0, 0.7, "NUM"),
        TokenVote(1, 0.9, "PUNCT"),
    ]
    votes = unit_votes(tokens, CFG)
    assert votes[0] == pytest.approx(1.94 / 1.9522, rel=1e-6)
    assert votes[1] == pytest.approx(0.005 / 1.9522, rel=1e-6)
    assert votes[2] == pytest.approx(0.0072 / 1.9522, rel=1e-6)
    assert curate(tokens, CFG) == [(0, pytest.approx(1.94 / 1.9522, rel=1e-6))]


def test_coverage_takes_sources_until_085():
    # Two coherent runs of equal confidence: u0 six nouns, u1 four nouns -> 0.6 / 0.4.
    tokens = [TokenVote(0, 1.0, "NOUN")] * 6 + [TokenVote(1, 1.0, "NOUN")] * 4
    chosen = curate(tokens, CFG)
    assert [u for u, _ in chosen] == [0, 1]
    assert [s for _, s in chosen] == pytest.approx([0.6, 0.4])


def test_p_min_drops_small_sources_even_if_coverage_not_reached():
    # u0 0.80, u1 0.14 and u2 0.06 by vote: u2 is under p_min = 0.07.
    tokens = (
        [TokenVote(0, 1.0, "NOUN")] * 40 + [TokenVote(1, 1.0, "NOUN")] * 7 + [TokenVote(2, 1.0, "NOUN")] * 3
    )
    chosen = curate(tokens, CFG.model_copy(update={"run_min": 0.0}))
    assert [u for u, _ in chosen] == [0, 1]


def test_stray_tokens_are_discounted_by_alpha():
    # u1 appears as three isolated single tokens (each 1/23 < run_min) between u0 runs.
    tokens = []
    for _ in range(3):
        tokens += [TokenVote(0, 1.0, "NOUN")] * 5 + [TokenVote(1, 1.0, "NOUN")]
    tokens += [TokenVote(0, 1.0, "NOUN")] * 5
    votes = unit_votes(tokens, CFG)
    # u0: 20 coherent; u1: 3 * 1 * (1 - 0.8) = 0.6  -> 0.6 / 20.6
    assert votes[1] == pytest.approx(0.6 / 20.6)


def test_punctuation_does_not_break_a_run():
    tokens = [TokenVote(0, 1.0, "NOUN"), TokenVote(1, 1.0, "PUNCT"), TokenVote(0, 1.0, "NOUN")]
    assert unit_votes(tokens, CFG) == {0: 1.0}


def test_sentence_without_content_has_no_citations():
    assert curate([TokenVote(0, 1.0, "PUNCT"), TokenVote(-1, 0.0, "NOUN")], CFG) == []


def test_disabled_curation_cites_every_voted_unit():
    tokens = [TokenVote(0, 1.0, "NOUN")] * 9 + [TokenVote(1, 0.2, "NOUN")]
    assert [u for u, _ in curate(tokens, CurationConfig(enabled=False))] == [0, 1]


def test_max_citations_caps():
    tokens = [TokenVote(0, 1.0, "NOUN")] * 5 + [TokenVote(1, 1.0, "NOUN")] * 5
    assert len(curate(tokens, CurationConfig(max_citations=1))) == 1


@pytest.mark.parametrize(
    "field,value", [("coverage", 0.0), ("coverage", 1.5), ("p_min", -0.1), ("alpha", 2.0), ("gamma", -1.0)]
)
def test_out_of_range_config_is_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        CurationConfig(**{field: value})


def test_negative_pos_weight_is_rejected():
    with pytest.raises(ConfigError, match="pos_weights"):
        CurationConfig(pos_weights={"NOUN": -1.0})


def test_min_relative_drops_units_far_below_the_top():
    # votes 0.6 / 0.4 (see test_coverage...): 0.4 < 0.7 * 0.6 -> dropped; 0.4 >= 0.5 * 0.6 -> kept
    tokens = [TokenVote(0, 1.0, "NOUN")] * 6 + [TokenVote(1, 1.0, "NOUN")] * 4
    assert [u for u, _ in curate(tokens, CurationConfig(min_relative=0.7))] == [0]
    assert [u for u, _ in curate(tokens, CurationConfig(min_relative=0.5))] == [0, 1]
    assert CurationConfig().min_relative == 0.5  # our default, measured on the dev set
