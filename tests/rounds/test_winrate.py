"""Win-rate numbers checked against values computed by hand."""

import math

import pytest

from rounds.winrate import bradley_terry, bradley_terry_win_rates, wilson_interval, win_rate


def test_wilson_interval_matches_the_hand_computed_fixture():
    # 14 wins of 20, z = 1.96: p = .7, centre = (.7 + 1.96²/40) / (1 + 1.96²/20)
    z = 1.959963984540054
    p, n = 0.7, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(14, 20)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert (round(low, 4), round(high, 4)) == (0.4810, 0.8545)


def test_ties_count_half_and_the_interval_stays_in_bounds():
    result = win_rate([1, 1, 0.5, 0])
    assert result.wins == 2.5 and result.total == 4 and result.rate == 0.625
    all_won = win_rate([1] * 5)
    assert all_won.high == 1.0 and 0.5 < all_won.low < 0.6  # Wilson: 0.5655 for 5/5
    assert round(all_won.low, 4) == 0.5655
    assert win_rate([]).total == 0


def test_bradley_terry_orders_rounds_by_their_results():
    # round 1 beats round 0 in 8 of 10; round 2 beats round 1 in 6 of 10
    games = [(1, 0, 1.0)] * 8 + [(1, 0, 0.0)] * 2 + [(2, 1, 1.0)] * 6 + [(2, 1, 0.0)] * 4
    strength = bradley_terry(games, 3)
    assert strength[0] < strength[1] < strength[2]
    rates = bradley_terry_win_rates(games, 3, resamples=200)
    assert rates[0] is None
    assert rates[1].rate == pytest.approx(strength[1] / (strength[1] + strength[0]))
    assert 0.7 < rates[1].rate < 0.85  # near the observed 8/10, shrunk a little by the prior
    assert rates[1].low < rates[1].rate < rates[1].high
    assert rates[2].total == 10 and rates[2].wins == 6
