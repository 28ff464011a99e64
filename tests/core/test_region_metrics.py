"""Region metrics on hand-made boxes: a cited box hits a gold box by shared area or by its centre."""

from __future__ import annotations

import pytest

from omnitrace_core.evaluation.metrics import box_hits, region_gold_coverage, region_hit_rate, region_scores

GOLD = (10, 10, 50, 50)


@pytest.mark.parametrize(
    ("box", "hit"),
    [
        ((0, 0, 20, 20), True),  # corner overlap: IoU > 0
        ((20, 20, 30, 30), True),  # inside
        ((0, 0, 100, 100), True),  # contains the gold box
        ((50, 10, 60, 50), False),  # touches an edge only: no shared area, centre outside
        ((60, 60, 80, 80), False),  # apart
        ((30, 30, 30, 30), True),  # a point inside: zero area, centre inside
        ((50, 50, 50, 50), True),  # a point on the gold corner: centre on the border counts
        ((51, 30, 51, 30), False),  # a point just outside
    ],
)
def test_box_hits(box, hit):
    assert box_hits(box, GOLD) is hit


def test_hit_rate_counts_cited_boxes_that_hit_any_gold_box():
    cited = [(0, 0, 20, 20), (60, 60, 80, 80), (70, 0, 90, 10), (100, 100, 120, 120)]
    gold = [GOLD, (65, 0, 95, 20)]
    assert region_hit_rate(cited, gold) == pytest.approx(2 / 4)
    assert region_gold_coverage(cited, gold) == pytest.approx(2 / 2)


def test_coverage_counts_gold_boxes_hit_by_any_cited_box():
    cited = [(20, 20, 30, 30), (25, 25, 35, 35)]  # both inside the first gold box
    gold = [GOLD, (100, 100, 120, 120), (200, 0, 220, 20)]
    assert region_hit_rate(cited, gold) == 1.0
    assert region_gold_coverage(cited, gold) == pytest.approx(1 / 3)


def test_nothing_to_divide_by_is_none():
    assert region_hit_rate([], [GOLD]) is None
    assert region_gold_coverage([(0, 0, 5, 5)], []) is None
    assert region_hit_rate([(0, 0, 5, 5)], []) == 0.0
    assert region_gold_coverage([], [GOLD]) == 0.0


def test_scores_pool_over_sentences():
    pairs = [
        ([(0, 0, 20, 20), (60, 60, 80, 80)], [GOLD]),  # 1 of 2 cited hit; 1 of 1 gold covered
        ([(100, 100, 110, 110)], [GOLD, (90, 90, 105, 105)]),  # 1 of 1 hit; 1 of 2 gold covered
        ([], [GOLD]),  # cites nothing: 0 of 1 gold covered
    ]
    got = region_scores(pairs)
    assert got["region_hit_rate"] == pytest.approx(2 / 3)
    assert got["region_gold_coverage"] == pytest.approx(2 / 4)
    assert got["region_pairs"] == 3
    assert region_scores([]) == {"region_hit_rate": None, "region_gold_coverage": None, "region_pairs": 0}
