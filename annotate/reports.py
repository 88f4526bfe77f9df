"""Numbers for the curator's project pages: agreement between annotators and left-side bias.

The statistics are plain Python over the four choices, so they are easy to check by hand
(tests/annotate/test_reports.py holds the worked examples); the queries that feed them are
below them and read each judgment once.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations, permutations

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Avg, Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from annotate import selectors
from annotate.models import Case, Choice, Comparison, Judgment, Project

BIAS_Z = 2.576  # two-sided 1% level of the standard normal


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


# --- Queries for the project pages -------------------------------------------------------------


def projects_for_home(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """The projects `user` may label, each with `waiting`: open comparisons they have not judged."""
    judged_by_user = Judgment.objects.filter(comparison=OuterRef("pk"), annotator=user)
    waiting = (
        Comparison.objects.filter(project=OuterRef("pk"), needs_judgments=True)
        .filter(~Exists(judged_by_user))
        .order_by()
        .values("project")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return selectors.projects_for_user(user=user).annotate(waiting=Coalesce(Subquery(waiting), 0))


@dataclass(frozen=True)
class AnnotatorRow:
    username: str
    judgments: int
    a_or_b: int
    picked_left: int
    ties: int
    both_bad: int
    corrected: int
    avg_seconds: float | None

    @property
    def left_share(self) -> float | None:
        """Share of a/b judgments that picked the left side; near 0.5 when A/B order is ignored."""
        return self.picked_left / self.a_or_b if self.a_or_b else None

    @property
    def position_biased(self) -> bool:
        """True when the left share is too far from 1/2 to be chance (two-sided p < 0.01).

        With random A/B order, left picks are Binomial(n, 1/2) for an unbiased annotator; the
        normal approximation z = (k - n/2) / sqrt(n/4) is fair from about 10 picks on.
        """
        n = self.a_or_b
        return n >= 10 and abs(self.picked_left - n / 2) / math.sqrt(n / 4) > BIAS_Z


@dataclass(frozen=True)
class PairAgreement:
    first: str
    second: str
    items: int
    kappa: float | None


@dataclass(frozen=True)
class ProjectReport:
    cases: int
    flagged_cases: int
    comparisons: int
    complete: int
    judgments: int
    slots: int  # judgments needed in all: queued comparisons x overlap
    annotators: list[AnnotatorRow]
    overlapping_items: int
    alpha: float | None
    pairs: list[PairAgreement]

    @property
    def percent_done(self) -> int:
        return round(100 * self.judgments / self.slots) if self.slots else 100


def project_report(*, project: Project) -> ProjectReport:
    """Progress, per-annotator numbers, and agreement on comparisons judged by several people."""
    cases = Case.objects.filter(project=project).aggregate(
        total=Count("pk"), flagged=Count("pk", filter=Q(flagged=True))
    )
    # Already-labelled pairs (imported chosen/rejected) are not queued and need no judgments.
    queued = Comparison.objects.filter(project=project, label="")
    comparisons = queued.aggregate(
        total=Count("pk"),
        complete=Count("pk", filter=Q(needs_judgments=False)),
        judgments=Coalesce(Sum("judgment_count"), 0),
    )
    judgments = Judgment.objects.filter(comparison__project=project)
    a_or_b = Q(choice__in=[Choice.A, Choice.B])
    rows = (
        judgments.order_by()
        .values("annotator__username")
        .annotate(
            judgments=Count("pk"),
            a_or_b=Count("pk", filter=a_or_b),
            picked_left=Count("pk", filter=a_or_b & Q(choice=F("shown_left"))),
            ties=Count("pk", filter=Q(choice=Choice.TIE)),
            both_bad=Count("pk", filter=Q(choice=Choice.BOTH_BAD)),
            corrected=Count("pk", filter=~Q(edited="")),
            avg_ms=Avg("duration_ms"),
        )
        .order_by("annotator__username")
    )
    annotators = [
        AnnotatorRow(
            username=row["annotator__username"],
            judgments=row["judgments"],
            a_or_b=row["a_or_b"],
            picked_left=row["picked_left"],
            ties=row["ties"],
            both_bad=row["both_bad"],
            corrected=row["corrected"],
            avg_seconds=row["avg_ms"] / 1000 if row["avg_ms"] is not None else None,
        )
        for row in rows
    ]
    units: dict[int, dict[str, str]] = defaultdict(dict)
    overlapping = judgments.filter(comparison__judgment_count__gte=2).order_by()
    for comparison_id, username, choice in overlapping.values_list(
        "comparison_id", "annotator__username", "choice"
    ):
        units[comparison_id][username] = choice
    by_pair: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for labels in units.values():
        for first, second in combinations(sorted(labels), 2):
            by_pair[(first, second)].append((labels[first], labels[second]))
    return ProjectReport(
        cases=cases["total"],
        flagged_cases=cases["flagged"],
        comparisons=comparisons["total"],
        complete=comparisons["complete"],
        judgments=comparisons["judgments"],
        slots=comparisons["total"] * project.overlap,
        annotators=annotators,
        overlapping_items=sum(1 for labels in units.values() if len(labels) >= 2),
        alpha=krippendorff_alpha_nominal([list(labels.values()) for labels in units.values()]),
        pairs=[
            PairAgreement(first, second, len(items), cohen_kappa(items))
            for (first, second), items in sorted(by_pair.items())
        ],
    )


def cases_filtered(*, project: Project, filters: dict) -> QuerySet[Case]:
    """The case list: newest first, with comparison and judgment counts, filtered as asked."""
    judged = Judgment.objects.filter(comparison__case=OuterRef("pk"))
    comparisons = (
        Comparison.objects.filter(case=OuterRef("pk"))
        .order_by()
        .values("case")
        .annotate(n=Count("pk"), j=Sum("judgment_count"))
    )
    cases = (
        Case.objects.filter(project=project)
        .annotate(
            comparison_count=Coalesce(Subquery(comparisons.values("n")), 0),
            judgment_count=Coalesce(Subquery(comparisons.values("j")), 0),
            judged=Exists(judged),
        )
        .order_by("-created_at", "-id")
    )
    if filters.get("flagged") in ("yes", "no"):
        cases = cases.filter(flagged=filters["flagged"] == "yes")
    if filters.get("split"):
        cases = cases.filter(split=filters["split"])
    if filters.get("judged") in ("yes", "no"):
        cases = cases.filter(judged=filters["judged"] == "yes")
    if tag := filters.get("tag"):
        if connection.features.supports_json_field_contains:
            cases = cases.filter(tags__contains=[tag])
        else:  # SQLite, the one-person default: match the tag as a JSON string element
            cases = cases.filter(tags__icontains=f'"{tag}"')
    return cases
