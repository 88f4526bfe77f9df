"""Agreement statistics against values worked out by hand or published with the method."""

import pytest

from annotate.reports import AnnotatorRow, cohen_kappa, krippendorff_alpha_nominal


def test_cohen_kappa_on_the_textbook_table():
    # 50 items: both "yes" 20, only rater 1 "yes" 5, only rater 2 "yes" 10, both "no" 15.
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)


def test_cohen_kappa_over_the_four_choices():
    # p_o = 3/4; rater 1: a 2, b 1, tie 1; rater 2: a 1, b 1, tie 1, both_bad 1;
    # p_e = (2*1 + 1*1 + 1*1)/16 = 1/4; kappa = (3/4 - 1/4) / (3/4) = 2/3.
    pairs = [("a", "a"), ("b", "b"), ("tie", "tie"), ("a", "both_bad")]
    assert cohen_kappa(pairs) == pytest.approx(2 / 3)


def test_cohen_kappa_is_undefined_without_items_or_variation():
    assert cohen_kappa([]) is None
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


def test_alpha_on_two_raters_three_items():
    # Coincidences: o_aa = 2, o_bb = 2, o_ab = o_ba = 1; n_a = n_b = 3, n = 6.
    # alpha = 1 - (n - 1) * (o_ab + o_ba) / (n_a*n_b + n_b*n_a) = 1 - 5 * 2 / 18 = 4/9.
    assert krippendorff_alpha_nominal([("a", "a"), ("a", "b"), ("b", "b")]) == pytest.approx(4 / 9)


def test_alpha_matches_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers,
    # 12 units with missing values; nominal alpha = 0.743.
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[row[i] for row in observers if row[i] is not None] for i in range(12)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_is_one_for_perfect_agreement_and_undefined_without_pairs():
    assert krippendorff_alpha_nominal([("a", "a", "a"), ("tie", "tie")]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([("a",), ("b",)]) is None
    assert krippendorff_alpha_nominal([("a", "a")]) is None


def _row(picked_left: int, a_or_b: int) -> AnnotatorRow:
    return AnnotatorRow("ann", a_or_b, a_or_b, picked_left, 0, 0, 0, None)


def test_left_side_bias_is_flagged_only_beyond_chance():
    # n = 100: z = (k - 50) / 5, flagged when |z| > 2.576, i.e. k >= 63 or k <= 37.
    assert _row(62, 100).position_biased is False
    assert _row(63, 100).position_biased is True
    assert _row(37, 100).position_biased is True
    assert _row(62, 100).left_share == pytest.approx(0.62)
    # Too few picks to tell, however lopsided.
    assert _row(9, 9).position_biased is False
    assert _row(0, 0).left_share is None
