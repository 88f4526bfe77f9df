"""Win rates of a patch round against the previous one, with 95% intervals.

Pure Python (no Django, no numpy), so the numbers can be checked by hand. A judgment of the new
answer against the previous one counts 1 for a win, 0 for a loss and ½ for a tie or "both bad"
(neither is better), as arena-style evaluations do.
"""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class WinRate:
    wins: float  # ties count ½
    total: int
    rate: float
    low: float
    high: float


def wilson_interval(wins: float, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] even at 0 or n wins."""
    if total <= 0:
        return 0.0, 1.0
    p = wins / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes: Sequence[float]) -> WinRate:
    """outcomes: 1 (new wins), 0 (previous wins), 0.5 (tie or both bad), one per judgment."""
    total = len(outcomes)
    wins = float(sum(outcomes))
    low, high = wilson_interval(wins, total)
    return WinRate(wins=wins, total=total, rate=wins / total if total else 0.0, low=low, high=high)


def bradley_terry(
    games: Sequence[tuple[int, int, float]], players: int, iterations: int = 500
) -> list[float]:
    """Bradley–Terry strengths by Hunter's MM algorithm, normalised to a geometric mean of 1.

    games: (i, j, score of i against j) with score 1, 0 or 0.5. A tiny prior game against every
    other player keeps a player with no losses (or no wins) finite.
    """
    wins = [[0.0] * players for _ in range(players)]
    for i, j, score in games:
        wins[i][j] += score
        wins[j][i] += 1 - score
    prior = 0.1
    for i in range(players):
        for j in range(players):
            if i != j:
                wins[i][j] += prior / 2
    strength = [1.0] * players
    for _ in range(iterations):
        updated = []
        for i in range(players):
            total_wins = sum(wins[i])
            denom = sum(
                (wins[i][j] + wins[j][i]) / (strength[i] + strength[j])
                for j in range(players)
                if j != i
            )
            updated.append(total_wins / denom if denom else strength[i])
        log_mean = sum(math.log(s) for s in updated) / players
        strength = [s / math.exp(log_mean) for s in updated]
    return strength


def bradley_terry_win_rates(
    games: Sequence[tuple[int, int, float]], players: int, resamples: int = 300, seed: int = 0
) -> list[WinRate | None]:
    """For each round k ≥ 1, P(round k beats round k-1) under Bradley–Terry over all rounds,
    with a 95% percentile bootstrap interval over the judgments. Entry 0 is None."""

    def rates(sample: Sequence[tuple[int, int, float]]) -> list[float]:
        s = bradley_terry(sample, players)
        return [s[k] / (s[k] + s[k - 1]) for k in range(1, players)]

    point = rates(games)
    rng = random.Random(seed)
    boot = [rates([rng.choice(games) for _ in games]) for _ in range(resamples)] if games else []
    result: list[WinRate | None] = [None]
    for k in range(1, players):
        direct = [score if i == k else 1 - score for i, j, score in games if {i, j} == {k, k - 1}]
        samples = sorted(b[k - 1] for b in boot)
        low = samples[int(0.025 * (len(samples) - 1))] if samples else 0.0
        high = samples[int(0.975 * (len(samples) - 1))] if samples else 1.0
        result.append(
            WinRate(wins=sum(direct), total=len(direct), rate=point[k - 1], low=low, high=high)
        )
    return result
