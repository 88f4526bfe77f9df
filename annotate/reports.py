"""Numbers for the curator's project pages: agreement between annotators and left-side bias.

The statistics are plain Python over the four choices, so they are easy to check by hand
(tests/annotate/test_reports.py holds the worked examples); the queries that feed them are
below them and read each judgment once.
"""

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from itertools import permutations


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa for two raters; `pairs` holds (rater 1's label, rater 2's label) per item.

    None when it is undefined: no items, or both raters always used one and the same label
    (chance agreement is then 1 and kappa is 0/0).
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for first, second in pairs if first == second) / n
    first_counts = Counter(first for first, _ in pairs)
    second_counts = Counter(second for _, second in pairs)
    expected = sum(first_counts[label] * second_counts[label] for label in first_counts) / n**2
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha, nominal metric; each unit is the labels its raters gave.

    Any number of raters per unit and missing ratings are fine; a unit with fewer than two
    labels cannot be paired and is left out, as the definition says. None when undefined
    (fewer than two pairable labels, or only one label value in all the data).
    """
    coincidences: Counter[tuple[Hashable, Hashable]] = Counter()
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        for c, k in permutations(unit, 2):
            coincidences[(c, k)] += 1 / (m - 1)
    totals: Counter[Hashable] = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    disagreement_expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or disagreement_expected == 0:
        return None
    disagreement_observed = sum(w for (c, k), w in coincidences.items() if c != k)
    return 1 - (n - 1) * disagreement_observed / disagreement_expected
