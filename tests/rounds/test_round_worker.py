"""A whole round on a real worker: patch, "Next round", judge blind through the API, read the
win rate. The fixture is computed by hand:

    case       split    judged      outcome
    0          train    new         1
    1          train    new         1
    2          train    previous    0
    3          train    both bad    ½
    4          heldout  new         1
    5          heldout  tie         ½
                                    4 of 6: rate 0.6667, Wilson 95% [0.3000, 0.9032]

Cases 2 and 3 are still failing; they go back for new candidates from the round's adapter.
"""

from __future__ import annotations

import pytest

from annotate.models import Case, Comparison, Response
from rounds import selectors
from rounds.models import GenerationRequest, Round, RoundAnswer
from tests.conftest import wait_for
from tests.rounds.conftest import bearer, make_flagged_project, token_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]

PLAN = ("new", "new", "previous", "both_bad", "new", "tie")
PAYLOAD_KEYS = {"id", "prompt", "a", "b", "lease_expires_at"}


def _judged_project(judge):
    """Six round cases; the four flagged ones also carry a better answer, judged, to train on."""
    from annotate.services import comparison_create, judgment_submit, response_create

    project = make_flagged_project(slug="rounds", flagged=4, heldout=2)
    for case in Case.objects.filter(project=project, split="train"):
        good = response_create(
            case=case, text=f"the refund window is thirty days ({case.pk})", origin="human"
        )
        bad = case.responses.get(origin="deployed")
        comparison = comparison_create(case=case, response_a=bad, response_b=good)
        judgment_submit(comparison=comparison, annotator=judge, choice="b")
    return project


def _wait_status(client, url: str, token: str) -> dict:
    def finished():
        body = client.get(url, **bearer(token)).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, what=f"{url} to finish")


def test_a_round_is_judged_blind_and_scored_against_the_previous_one(
    client, curator, gpu_worker, base_model, make_judges
):
    judges = make_judges(3)
    project = _judged_project(judges[2])
    curator_token = token_for(curator.user)
    gpu_worker()

    # Patch: a real training job on the worker, launched through J's API.
    launched = client.post(
        f"/api/v1/projects/{project.slug}/jobs",
        {"config": {"epochs": 2, "lora_r": 4}},
        content_type="application/json",
        **bearer(curator_token),
    )
    assert launched.status_code == 202, launched.content
    job = _wait_status(client, f"/api/v1/jobs/{launched.json()['id']}", curator_token)
    assert job["status"] == "succeeded", job.get("error")

    # "Next round", as the curator clicks it on the rounds page.
    client.force_login(curator.user)
    page = client.get(f"/rounds/project/{project.slug}/")
    assert f'value="{job["id"]}"'.encode() in page.content
    started = client.post(f"/rounds/project/{project.slug}/next/", {"job": job["id"]})
    assert started.status_code == 302
    first = Round.objects.get(project=project, number=1)
    generation = _wait_status(client, f"/api/v1/generations/{first.generation_id}", curator_token)
    assert generation["status"] == "succeeded", generation["error"]
    client.logout()

    answers = list(RoundAnswer.objects.filter(round=first).select_related("response", "case"))
    assert len(answers) == 6 and all(a.comparison_id for a in answers)
    assert {a.response.adapter_name for a in answers} == {f"job-{job['id']}"}
    by_case = {a.case_id: a for a in answers}
    case_ids = sorted(by_case)
    wish = dict(zip(case_ids, PLAN, strict=True))

    # The compare page shows a blind comparison without any origin or model.
    client.force_login(judges[0])
    compare = client.get(f"/p/{project.slug}/").content.decode()
    for secret in ("job-", base_model.name, "generated", "deployed model", "Deployed"):
        assert secret not in compare
    client.logout()

    # Judge every round comparison through the API, with two annotators' tokens.
    tokens = [token_for(judge) for judge in judges[:2]]
    done = [False, False]
    judged = 0
    while not all(done):
        for index, token in enumerate(tokens):
            if done[index]:
                continue
            leased = client.get(f"/api/v1/projects/{project.slug}/comparisons/next",
                                **bearer(token))  # fmt: skip
            if leased.status_code == 204:
                done[index] = True
                continue
            body = leased.json()
            assert set(body) == PAYLOAD_KEYS
            for secret in ("job-", base_model.name, "generated", "deployed"):
                assert secret not in leased.content.decode()
            answer = RoundAnswer.objects.get(comparison_id=body["id"])
            new_text, old_text = answer.response.text, answer.previous_response.text
            assert {body["a"], body["b"]} == {new_text, old_text}
            new_shown = "a" if body["a"] == new_text else "b"
            plan = wish[answer.case_id]
            choice = {"new": new_shown, "previous": "b" if new_shown == "a" else "a"}.get(
                plan, plan
            )
            posted = client.post(
                f"/api/v1/comparisons/{body['id']}/judgment",
                {"choice": choice},
                content_type="application/json",
                **bearer(token),
            )
            assert posted.status_code == 201, posted.content
            judged += 1
    assert judged == 6

    row = selectors.rounds_timeline(project=project)[1]
    assert row.win_rate.wins == 4 and row.win_rate.total == 6
    assert round(row.win_rate.rate, 4) == 0.6667
    assert (round(row.win_rate.low, 4), round(row.win_rate.high, 4)) == (0.3000, 0.9032)
    assert row.pairs_used == 4 and row.fully_judged
    assert sorted(c.pk for c in row.still_failing) == case_ids[2:4]

    client.force_login(curator.user)
    timeline = client.get(f"/rounds/project/{project.slug}/").content.decode()
    assert "67% (30%–90%), 6 judgments" in timeline
    detail = client.get(f"/rounds/{first.pk}/").content.decode()
    assert "67% (30%–90%), 6 judgments" in detail and "Still failing" in detail

    # Still-failing cases go back for new candidates from this round's adapter.
    requeued = client.post(f"/rounds/{first.pk}/requeue")
    assert requeued.status_code == 302
    again = GenerationRequest.objects.exclude(pk=first.generation_id).get()
    assert sorted(again.cases.values_list("pk", flat=True)) == case_ids[2:4]
    assert again.adapter_job_id == job["id"]
    result = _wait_status(client, f"/api/v1/generations/{again.pk}", curator_token)
    assert result["status"] == "succeeded", result["error"]
    fresh = Response.objects.filter(case_id__in=case_ids[2:4], adapter_name=f"job-{job['id']}")
    assert fresh.count() > 2  # the round answers plus new candidates
    assert Comparison.objects.filter(case_id__in=case_ids[2:4], blind=False).count() > 4


@pytest.fixture
def make_judges(transactional_db):
    from accounts.services import user_create

    def make(count: int) -> list:
        return [
            user_create(username=f"judge{i}", role="annotator", password="Judge-pw-123!")[0]
            for i in range(count)
        ]

    return make
