"""The annotation queue: leases, overlap, expiry, repeats, conflicts, undo, restricted projects."""

import os
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import AuditEvent
from annotate.models import Comparison, Judgment, Lease, Response
from annotate.services import (
    ComparisonTaken,
    JudgmentConflict,
    NotLeased,
    judgment_submit,
    judgment_undo,
    lease_next_comparison,
    project_create,
    project_update,
)
from tests.annotate.conftest import make_pairs

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def test_two_annotators_never_get_the_same_comparison_with_overlap_1(project, make_user):
    make_pairs(project, 2)
    first = lease_next_comparison(project=project, annotator=make_user("ann1"))
    second = lease_next_comparison(project=project, annotator=make_user("ann2"))
    third = lease_next_comparison(project=project, annotator=make_user("ann3"))
    assert first[0].pk != second[0].pk
    assert third is None


def test_asking_again_returns_the_same_leased_comparison(project, annotator):
    make_pairs(project, 3)
    first = lease_next_comparison(project=project, annotator=annotator.user)
    again = lease_next_comparison(project=project, annotator=annotator.user)
    assert again[0].pk == first[0].pk
    assert again[2] == first[2]  # the same side on the left after a reload
    assert Lease.objects.filter(annotator=annotator.user).count() == 1


def test_an_expired_lease_returns_the_comparison_to_the_pool(project, make_user):
    (comparison,) = make_pairs(project, 1)
    walked_away, other = make_user("ann1"), make_user("ann2")
    assert lease_next_comparison(project=project, annotator=walked_away)[0].pk == comparison.pk
    assert lease_next_comparison(project=project, annotator=other) is None
    Lease.objects.filter(annotator=walked_away).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    leased = lease_next_comparison(project=project, annotator=other)
    assert leased[0].pk == comparison.pk
    # The one who walked away cannot judge it any more: it is with someone else now.
    with pytest.raises(ComparisonTaken):
        judgment_submit(comparison=comparison, annotator=walked_away, choice="a")
    judgment_submit(comparison=comparison, annotator=other, choice="b")
    assert Comparison.objects.get(pk=comparison.pk).judgment_count == 1


def test_overlap_2_gives_each_comparison_to_two_distinct_annotators(make_user):
    project = project_create(name="Double", slug="double", overlap=2)
    (comparison,) = make_pairs(project, 1)
    users = [make_user(f"ann{i}") for i in range(3)]
    assert lease_next_comparison(project=project, annotator=users[0])[0].pk == comparison.pk
    assert lease_next_comparison(project=project, annotator=users[1])[0].pk == comparison.pk
    assert lease_next_comparison(project=project, annotator=users[2]) is None
    judgment_submit(comparison=comparison, annotator=users[0], choice="a")
    # users[0] judged it: it is not offered to them again.
    assert lease_next_comparison(project=project, annotator=users[0]) is None
    judgment_submit(comparison=comparison, annotator=users[1], choice="a")
    with pytest.raises(ComparisonTaken):
        judgment_submit(comparison=comparison, annotator=users[2], choice="b")
    assert Judgment.objects.filter(comparison=comparison).count() == 2


def test_a_repeated_identical_judgment_is_a_no_op(project, annotator):
    (comparison,) = make_pairs(project, 1)
    lease_next_comparison(project=project, annotator=annotator.user)
    first, created = judgment_submit(
        comparison=comparison, annotator=annotator.user, choice="b", rationale="clearer"
    )
    again, created_again = judgment_submit(
        comparison=comparison, annotator=annotator.user, choice="b", rationale="clearer"
    )
    assert (created, created_again, again.pk) == (True, False, first.pk)
    assert Judgment.objects.count() == 1
    assert Comparison.objects.get(pk=comparison.pk).judgment_count == 1
    assert AuditEvent.objects.filter(action="judgment.create").count() == 1


def test_a_different_second_judgment_is_a_conflict(project, annotator):
    (comparison,) = make_pairs(project, 1)
    judgment_submit(comparison=comparison, annotator=annotator.user, choice="a")
    with pytest.raises(JudgmentConflict, match="already judged comparison .* as 'a'; undo"):
        judgment_submit(comparison=comparison, annotator=annotator.user, choice="tie")
    with pytest.raises(JudgmentConflict, match="as 'a' with another corrected answer or rationale"):
        judgment_submit(
            comparison=comparison, annotator=annotator.user, choice="a", rationale="because"
        )
    assert Judgment.objects.get().choice == "a"


def test_the_database_refuses_a_second_judgment_by_the_same_annotator(project, annotator):
    (comparison,) = make_pairs(project, 1)
    judgment, _ = judgment_submit(comparison=comparison, annotator=annotator.user, choice="a")
    with pytest.raises(IntegrityError), transaction.atomic():
        Judgment.objects.create(
            comparison=comparison, annotator=annotator.user, choice="b", shown_left="a"
        )


def test_a_bad_choice_is_a_validation_error(project, annotator):
    (comparison,) = make_pairs(project, 1)
    with pytest.raises(ValidationError, match="choice must be one of"):
        judgment_submit(comparison=comparison, annotator=annotator.user, choice="left")
    assert not Judgment.objects.exists()


def test_judgment_records_the_shown_order_and_an_edited_answer(project, annotator):
    (comparison,) = make_pairs(project, 1)
    _, lease, shown_left = lease_next_comparison(project=project, annotator=annotator.user)
    judgment, _ = judgment_submit(
        comparison=comparison,
        annotator=annotator.user,
        choice="both_bad",
        edited="The right answer.",
        duration_ms=5400,
    )
    assert judgment.shown_left == shown_left
    assert judgment.corrected_response.text == "The right answer."
    assert judgment.corrected_response.origin == "human"
    assert judgment.corrected_response.created_by == annotator.user
    assert not Lease.objects.exists()
    event = AuditEvent.objects.get(action="judgment.create")
    assert event.actor == annotator.user
    assert event.new_value["choice"] == "both_bad"


def test_undo_takes_back_the_last_judgment_and_offers_the_pair_again(project, annotator):
    first, second = make_pairs(project, 2)
    judgment_submit(comparison=first, annotator=annotator.user, choice="a")
    judgment_submit(comparison=second, annotator=annotator.user, choice="tie", edited="Better.")
    undone = judgment_undo(annotator=annotator.user, project=project)
    assert undone.comparison.pk == second.pk and undone.choice == "tie"
    assert list(Judgment.objects.values_list("comparison_id", flat=True)) == [first.pk]
    assert Comparison.objects.get(pk=second.pk).judgment_count == 0
    assert not Response.objects.filter(text="Better.").exists()
    assert lease_next_comparison(project=project, annotator=annotator.user)[0].pk == second.pk
    assert AuditEvent.objects.get(action="judgment.undo").old_value["choice"] == "tie"
    judgment_submit(comparison=second, annotator=annotator.user, choice="b")
    assert Comparison.objects.get(pk=second.pk).judgment_count == 1


def test_undo_with_nothing_to_undo(project, annotator):
    assert judgment_undo(annotator=annotator.user, project=project) is None


def test_a_restricted_project_is_for_members_and_staff(curator, annotator, make_user):
    project = project_create(name="Secret", slug="secret", restricted=True)
    make_pairs(project, 3)
    for outsider in (annotator.user, curator.user):  # a curator's role opens nothing by itself
        with pytest.raises(PermissionDenied, match="restricted"):
            lease_next_comparison(project=project, annotator=outsider)
    staff = make_user("staffer")
    staff.is_staff = True
    staff.save()
    assert lease_next_comparison(project=project, annotator=staff) is not None
    project_update(project=project, members=[annotator.user, curator.user])
    assert lease_next_comparison(project=project, annotator=annotator.user) is not None
    assert lease_next_comparison(project=project, annotator=curator.user) is not None


def test_raising_the_overlap_reopens_judged_comparisons(project, make_user):
    (comparison,) = make_pairs(project, 1)
    judgment_submit(comparison=comparison, annotator=make_user("ann1"), choice="a")
    assert lease_next_comparison(project=project, annotator=make_user("ann2")) is None
    project_update(project=project, overlap=2)
    assert lease_next_comparison(project=project, annotator=make_user("ann3"))[0] == comparison


def test_sides_are_randomised_and_recorded(project, annotator):
    make_pairs(project, 40)
    while leased := lease_next_comparison(project=project, annotator=annotator.user):
        judgment_submit(comparison=leased[0], annotator=annotator.user, choice="a")
    sides = Counter(Judgment.objects.values_list("shown_left", flat=True))
    # Both sides show up on the left (all 40 the same way: odds 1 in 2**39).
    assert set(sides) == {"a", "b"} and sides.total() == 40


def test_an_own_expired_lease_is_renewed_in_place_and_may_still_judge(project, annotator):
    (comparison,) = make_pairs(project, 1)
    lease_next_comparison(project=project, annotator=annotator.user)
    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert lease_next_comparison(project=project, annotator=annotator.user)[0] == comparison
    assert Lease.objects.get().expires_at > timezone.now()
    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    # Nobody else holds it: the expired lease does not stand in the way of the judgment.
    judgment_submit(comparison=comparison, annotator=annotator.user, choice="a")
    assert Comparison.objects.get(pk=comparison.pk).judgment_count == 1


def test_a_judgment_that_requires_a_lease_needs_a_live_one_of_the_annotator(project, annotator):
    first, second = make_pairs(project, 2)
    with pytest.raises(NotLeased, match="was not leased to you"):
        judgment_submit(comparison=second, annotator=annotator.user, choice="a", require_lease=True)
    lease_next_comparison(project=project, annotator=annotator.user)
    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(NotLeased, match="expired"):
        judgment_submit(comparison=first, annotator=annotator.user, choice="a", require_lease=True)
    assert not Judgment.objects.exists()
    lease_next_comparison(project=project, annotator=annotator.user)
    judgment_submit(comparison=first, annotator=annotator.user, choice="a", require_lease=True)
    assert Comparison.objects.get(pk=first.pk).judgment_count == 1


def test_a_comparison_whose_overlap_was_lowered_under_a_live_lease_is_full(make_user):
    project = project_create(name="Double", slug="double", overlap=2)
    (comparison,) = make_pairs(project, 1)
    first, second = make_user("ann1"), make_user("ann2")
    lease_next_comparison(project=project, annotator=first)
    lease_next_comparison(project=project, annotator=second)
    project_update(project=project, overlap=1)
    judgment_submit(comparison=comparison, annotator=first, choice="a")
    with pytest.raises(ComparisonTaken, match="has all its judgments"):
        judgment_submit(comparison=comparison, annotator=second, choice="b")
    assert Comparison.objects.get(pk=comparison.pk).judgment_count == 1


def test_only_members_and_staff_judge_in_a_restricted_project(curator, annotator):
    project = project_create(name="Secret", slug="secret", restricted=True)
    first, second = make_pairs(project, 2)
    for outsider in (annotator.user, curator.user):
        with pytest.raises(PermissionDenied, match="restricted to its members"):
            judgment_submit(comparison=first.pk, annotator=outsider, choice="a")
    curator.user.is_staff = True
    curator.user.save()
    judgment_submit(comparison=first.pk, annotator=curator.user, choice="a")
    project_update(project=project, members=[annotator.user])
    judgment_submit(comparison=second.pk, annotator=annotator.user, choice="b")
    assert Judgment.objects.count() == 2


def test_a_labelled_or_missing_comparison_cannot_be_judged(project, annotator):
    from annotate.services import case_create, comparison_create, response_create

    case = case_create(project=project, prompt="Boots?", source="test")
    chosen = response_create(case=case, text="30 days.", origin="imported")
    rejected = response_create(case=case, text="7 days.", origin="imported")
    labelled = comparison_create(case=case, response_a=chosen, response_b=rejected, label="a")
    with pytest.raises(ComparisonTaken, match="imported already labelled"):
        judgment_submit(comparison=labelled.pk, annotator=annotator.user, choice="b")
    with pytest.raises(Comparison.DoesNotExist):
        judgment_submit(comparison=labelled.pk + 1000, annotator=annotator.user, choice="b")
    assert not Judgment.objects.exists()


def test_the_queue_takes_the_same_branches_on_the_embedded_sqlite(tmp_path):
    """On SQLite the queue runs queue_sql's twin of the PL/pgSQL functions, statement by
    statement. Every test in this file runs there as well, but the concurrent one: SQLite
    serialises writers and is for one person."""
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_NAME"}
    env |= {"DATABASE_URL": "", "PATCHWISE_VAR_DIR": str(tmp_path)}  # no URL: SQLite
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-p", "tests.annotate.on_sqlite", __file__, "-k", "not concurrent and not sqlite"),
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed, \d+ deselected in ", summary), summary  # none failed or skipped
    assert int(summary.split()[0]) >= 15  # every test above but the concurrent ones ran there


def _label_concurrently(project, users, results, errors):
    """One thread per annotator, each with its own database connection, until the queue is dry."""

    def work(user):
        rng = random.Random(user.pk)
        try:
            while True:
                leased = lease_next_comparison(project=project, annotator=user)
                if leased is None:
                    return
                comparison, _lease, _side = leased
                choice = rng.choice(["a", "b", "tie", "both_bad"])
                judgment, created = judgment_submit(
                    comparison=comparison, annotator=user, choice=choice
                )
                results.append((comparison.pk, user.pk, created))
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("overlap", [1, 2])
def test_16_concurrent_annotators_judge_400_comparisons(overlap):
    from accounts.services import user_create

    assert connection.vendor == "postgresql"
    project = project_create(name=f"Load {overlap}", slug=f"load-{overlap}", overlap=overlap)
    comparisons = make_pairs(project, 400)
    users = [
        user_create(username=f"load{i}", role="annotator", password="load-pw-9x!")[0]
        for i in range(16)
    ]
    results, errors = [], []
    _label_concurrently(project, users, results, errors)

    assert errors == []
    assert all(created for _c, _u, created in results)
    per_comparison = Counter(comparison_id for comparison_id, _u, _c in results)
    assert set(per_comparison) == {c.pk for c in comparisons}
    assert set(per_comparison.values()) == {overlap}
    rows = list(Judgment.objects.values_list("comparison_id", "annotator_id"))
    assert sorted(rows) == sorted((c, u) for c, u, _ in results)  # none lost, none doubled
    assert Counter(c for c, _u in rows) == per_comparison
    counts = Comparison.objects.filter(project=project).values_list(
        "judgment_count", "needs_judgments"
    )
    assert set(counts) == {(overlap, False)}
    assert len({u for _c, u in rows}) > 1  # the work was shared
    assert not Lease.objects.exists()
