"""Token -> unit mapping: summed vs peak rule, confidence, bias correction."""

from __future__ import annotations

import pytest
import torch

from omnitrace_core.config import MappingConfig
from omnitrace_core.mapping import TokenMapper, UnitIndex, reference_share
from tests.factories import make_unit


def _units():
    # positions 0 (sink) | 1-3 unit a | 4-6 unit b | 7-8 scaffolding
    return [make_unit("a", "A", token_start=1, token_end=4), make_unit("b", "B", token_start=4, token_end=7)]


def test_summed_rule_picks_largest_total_and_peak_rule_the_single_max():
    index = UnitIndex(_units())
    row = torch.tensor([0.3, 0.1, 0.1, 0.1, 0.25, 0.0, 0.0, 0.1, 0.05])
    summed = TokenMapper(index, MappingConfig(rule="summed", bias_correction="none")).map(row)
    peak = TokenMapper(index, MappingConfig(rule="peak", bias_correction="none")).map(row)
    assert summed.unit_index == 0 and summed.confidence == pytest.approx(0.3 / 0.55)
    assert peak.unit_index == 1 and peak.confidence == pytest.approx(0.25 / 0.55)
    assert summed.source_fraction == pytest.approx(0.55 / 1.0)


def test_scaffolding_and_sink_are_never_units():
    index = UnitIndex(_units(), exclude_first_positions=2)
    row = torch.tensor([0.9, 0.5, 0.0, 0.0, 0.01, 0.0, 0.0, 0.9, 0.9])
    m = TokenMapper(index, MappingConfig(bias_correction="none")).map(row)
    assert m.unit_index == 1  # position 1 (in unit a) is excluded as sink region


def test_prompt_correction_divides_by_reference_share():
    index = UnitIndex(_units())
    ref = reference_share(index, [torch.tensor([0.0, 0.6, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0])])
    assert ref is not None and ref.tolist() == pytest.approx([0.8, 0.2])
    row = torch.tensor([0.0, 0.5, 0.1, 0.1, 0.2, 0.05, 0.05, 0.0, 0.0])  # raw shares 0.7 / 0.3
    m = TokenMapper(index, MappingConfig(bias_correction="prompt"), ref).map(row)
    # corrected: 0.7/0.8 = 0.875, 0.3/0.2 = 1.5 -> b wins with 1.5/2.375
    assert m.unit_index == 1
    assert m.confidence == pytest.approx(1.5 / 2.375)
    assert m.raw_shares == pytest.approx((0.7, 0.3))


def test_running_correction_is_causal():
    index = UnitIndex(_units())
    mapper = TokenMapper(index, MappingConfig(bias_correction="running"))
    first = mapper.map(torch.tensor([0, 0.4, 0.2, 0.2, 0.2, 0, 0, 0, 0.0]))  # 0.8 / 0.2, nothing before
    assert first.unit_index == 0 and first.confidence == pytest.approx(0.8)
    second = mapper.map(torch.tensor([0, 0.3, 0.2, 0.2, 0.3, 0, 0, 0, 0.0]))  # raw 0.7 / 0.3
    # reference = first token's raw shares (0.8, 0.2): 0.875 vs 1.5
    assert second.unit_index == 1


def test_row_without_unit_mass_maps_to_nothing():
    index = UnitIndex(_units())
    m = TokenMapper(index, MappingConfig()).map(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert m.unit_index == -1 and m.confidence == 0.0


def test_token_rows_choose_producing_reading_or_both():
    index = UnitIndex(_units())
    producing = torch.tensor([0, 0.6, 0.1, 0.1, 0.1, 0.05, 0.05, 0, 0.0])  # shares 0.8 / 0.2
    reading = torch.tensor([0, 0.1, 0.05, 0.05, 0.4, 0.2, 0.2, 0, 0.0])  # shares 0.2 / 0.8
    cfg = MappingConfig(bias_correction="none")
    made = TokenMapper(index, cfg.model_copy(update={"token_rows": "producing"})).map(producing, reading)
    read = TokenMapper(index, cfg.model_copy(update={"token_rows": "reading"})).map(producing, reading)
    both = TokenMapper(index, cfg.model_copy(update={"token_rows": "both"})).map(producing, reading)
    assert made.unit_index == 0 and made.raw_shares == pytest.approx((0.8, 0.2))
    assert read.unit_index == 1 and read.raw_shares == pytest.approx((0.2, 0.8))
    assert both.raw_shares == pytest.approx((0.5, 0.5))
    # No reading row (the last token of a length-stopped decode): the producing row stands.
    alone = TokenMapper(index, cfg).map(producing, None)
    assert alone.unit_index == 0 and alone.raw_shares == pytest.approx((0.8, 0.2))


def test_question_competitor_marks_echoes_and_leaves_units_as_they_were():
    # positions 7-8 are the question: a token looking there more than usual is an echo
    index = UnitIndex(_units(), competitor_positions=[7, 8])
    assert index.competitor == 2 and index.slots == 3
    rows = [torch.tensor([0.0, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1])]
    assert reference_share(index, rows).tolist() == pytest.approx([0.5, 0.5])
    assert reference_share(index, rows, slots=True).tolist() == pytest.approx([0.4, 0.4, 0.2])
    plain = TokenMapper.from_reference_rows(UnitIndex(_units()), MappingConfig(bias_correction="both"), rows)
    mapper = TokenMapper.from_reference_rows(index, MappingConfig(bias_correction="both"), rows)
    echo_row = torch.tensor([0.0, 0.2, 0.1, 0.0, 0.1, 0.0, 0.0, 0.3, 0.3])
    answer_row = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, 0.2, 0.1, 0.1, 0.1])
    for row, is_echo in [(echo_row, True), (answer_row, False), (echo_row, True)]:
        m, p = mapper.map(row), plain.map(row)
        # units among themselves (unit, confidence, shares, running reference) are unchanged
        assert m.echo is is_echo and p.echo is False
        assert (m.unit_index, m.shares, m.raw_shares) == (p.unit_index, p.shares, p.raw_shares)
        assert m.confidence == pytest.approx(p.confidence) and m.source_fraction == pytest.approx(p.source_fraction)


def test_question_competitor_absent_changes_nothing():
    row = torch.tensor([0.0, 0.2, 0.1, 0.0, 0.1, 0.0, 0.0, 0.3, 0.3])
    plain = TokenMapper(UnitIndex(_units()), MappingConfig(bias_correction="none")).map(row)
    empty = TokenMapper(UnitIndex(_units(), competitor_positions=[]), MappingConfig(bias_correction="none")).map(row)
    assert plain == empty and plain.unit_index == 0 and not plain.echo
    # the sink region is never a competitor either
    assert UnitIndex(_units(), exclude_first_positions=1, competitor_positions=[0]).competitor is None


def test_peak_rule_never_picks_a_question_position():
    index = UnitIndex(_units(), competitor_positions=[7, 8])
    row = torch.tensor([0.0, 0.1, 0.1, 0.0, 0.3, 0.0, 0.0, 0.6, 0.1])
    m = TokenMapper(index, MappingConfig(rule="peak", bias_correction="none")).map(row)
    assert m.unit_index == 1 and m.echo


def test_a_reference_row_from_inside_the_question_sees_only_its_past():
    # a causal row of the query at position 7 (inside the question 7-8) has length 8
    index = UnitIndex(_units(), competitor_positions=[7, 8])
    assert index.mass(torch.tensor([0.0, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.2])).tolist() == pytest.approx([0.4, 0.4, 0.2])
    with pytest.raises(ValueError, match="does not cover the units"):
        index.mass(torch.tensor([0.0, 0.5, 0.5]))
