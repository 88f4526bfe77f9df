"""The labelling API through HTTP with bearer tokens: cases, next, judgment, pairs.jsonl."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.services import token_create
from annotate.models import Case, Comparison, Judgment, Lease, Response
from annotate.services import case_create, project_create
from tests.annotate.conftest import make_pairs


@pytest.fixture
def api(client):
    """api(user) -> a caller that sends requests with that user's bearer token."""

    def for_user(user):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user)}"}

        def call(method, path, body=None):
            kwargs = dict(headers)
            if body is not None:
                kwargs |= {"data": json.dumps(body), "content_type": "application/json"}
            return getattr(client, method)(f"/api/v1{path}", **kwargs)

        return call

    return for_user


def test_a_curator_flags_a_case_and_it_is_queued(project, curator, api):
    response = api(curator.user)(
        "post",
        "/projects/support/cases",
        {
            "prompt": [{"role": "user", "content": "Return window for boots?"}],
            "response": "7 days.",
            "better_response": "30 days.",
            "trace_id": "req-81",
            "note": "customer complaint",
        },
    )
    assert response.status_code == 201
    case = Case.objects.get(pk=response.json()["id"])
    assert (case.source, case.trace_id, case.flagged, case.split) == (
        "api",
        "req-81",
        True,
        "train",
    )
    assert case.comparisons.count() == 1


def test_flagging_errors(project, curator, annotator, api, client):
    as_curator = api(curator.user)
    body = {"prompt": "q", "response": "r"}
    missing = client.post("/api/v1/projects/support/cases", body)
    assert missing.status_code == 401 and "Authorization: Bearer TOKEN" in missing.json()["detail"]
    # a script's POST with a wrong token is told about the token, not about CSRF
    script = Client(enforce_csrf_checks=True, headers={"Authorization": "Bearer pw_bogus"})
    bogus = script.post("/api/v1/projects/support/cases", body, content_type="application/json")
    assert bogus.status_code == 401 and "unknown or revoked" in bogus.json()["detail"]
    same = as_curator("post", "/projects/support/cases", body | {"better_response": "r"})
    assert same.status_code == 422 and "same text as response" in str(same.json()["detail"])
    forbidden = api(annotator.user)("post", "/projects/support/cases", body)
    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": "Only curators may do this."}
    missing = as_curator("post", "/projects/nope/cases", body)
    assert missing.status_code == 404 and "detail" in missing.json()
    typo = as_curator("post", "/projects/support/cases", {"prompt": "q", "respons": "r"})
    assert typo.status_code == 422 and "detail" in typo.json()
    empty = as_curator("post", "/projects/support/cases", {"prompt": " ", "response": "r"})
    assert empty.status_code == 422
    assert empty.json() == {"detail": {"prompt": ["prompt is empty"]}}
    too_long = as_curator(
        "post", "/projects/support/cases", {"prompt": "q", "response": "x" * 100_001}
    )
    assert too_long.status_code == 422
    assert "the limit is 100,000" in too_long.json()["detail"]["response"][0]
    regression = as_curator("post", "/projects/support/cases", {**body, "split": "regression"})
    assert regression.status_code == 201
    assert Case.objects.count() == 1
    bad_json = client.post(
        "/api/v1/projects/support/cases",
        data="{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_create(user=curator.user)}",
    )
    assert bad_json.status_code in (400, 422) and "detail" in bad_json.json()


def test_label_through_the_api_until_none_is_left(project, annotator, api):
    (comparison,) = make_pairs(project, 1)
    call = api(annotator.user)
    leased = call("get", "/projects/support/comparisons/next")
    assert leased.status_code == 200
    item = leased.json()
    assert set(item) == {"id", "prompt", "a", "b", "lease_expires_at"}
    assert item["id"] == comparison.pk and item["prompt"] == "q0?"
    assert {item["a"], item["b"]} == {"answer A to q0", "answer B to q0"}
    # "a" is whatever this annotator was shown first; the stored choice names the response.
    judged = call("post", f"/comparisons/{item['id']}/judgment", {"choice": "a", "rationale": "ok"})
    assert judged.status_code == 201
    assert judged.json()["created"] is True and judged.json()["choice"] == "a"
    stored = Judgment.objects.get()
    picked = stored.comparison.response_a if stored.choice == "a" else stored.comparison.response_b
    assert picked.text == item["a"]
    assert stored.shown_left == ("a" if item["a"] == "answer A to q0" else "b")

    repeat = call("post", f"/comparisons/{item['id']}/judgment", {"choice": "a", "rationale": "ok"})
    assert repeat.status_code == 200 and repeat.json()["id"] == judged.json()["id"]
    assert Judgment.objects.count() == 1
    conflict = call("post", f"/comparisons/{item['id']}/judgment", {"choice": "tie"})
    assert conflict.status_code == 409 and "already judged" in conflict.json()["detail"]
    nothing = call("get", "/projects/support/comparisons/next")
    assert nothing.status_code == 204 and nothing.content == b""


@pytest.mark.parametrize("shown_left", ["a", "b"])
def test_the_api_choice_names_the_side_this_annotator_was_shown(
    project, annotator, api, shown_left
):
    """With "b" on the left, "a" is response_b: the mapping, its repeat, a conflict, the audit."""
    (comparison,) = make_pairs(project, 1)
    call = api(annotator.user)
    assert call("get", "/projects/support/comparisons/next").status_code == 200
    Lease.objects.filter(comparison=comparison).update(shown_left=shown_left)
    url = f"/comparisons/{comparison.pk}/judgment"

    judged = call("post", url, {"choice": "a", "edited": "A fixed answer."})
    assert judged.status_code == 201 and judged.json()["choice"] == "a"
    stored = Judgment.objects.get()
    assert stored.choice == shown_left and stored.shown_left == shown_left
    assert stored.corrected_response.text == "A fixed answer."
    assert not Lease.objects.exists()
    event = AuditEvent.objects.get(action="judgment.create")
    assert event.actor == annotator.user and event.target_id == str(stored.pk)
    assert event.new_value == {
        "comparison": comparison.pk,
        "choice": shown_left,
        "edited": True,
        "shown_left": shown_left,
    }

    repeat = call("post", url, {"choice": "a", "edited": "A fixed answer."})
    assert repeat.status_code == 200 and repeat.json() == {**judged.json(), "created": False}
    responses = Response.objects.count()
    conflict = call("post", url, {"choice": "b", "edited": "Another answer."})
    assert conflict.status_code == 409
    assert f"comparison {comparison.pk} as 'a'" in conflict.json()["detail"]
    # The refused judgment's corrected answer was not kept either.
    assert Response.objects.count() == responses and Judgment.objects.count() == 1


def test_judgment_errors(project, annotator, make_user, api):
    first, second = make_pairs(project, 2)
    call = api(annotator.user)
    assert call("post", "/comparisons/999999/judgment", {"choice": "a"}).status_code == 404
    bad = call("post", f"/comparisons/{first.pk}/judgment", {"choice": "left"})
    assert bad.status_code == 422 and "detail" in bad.json()
    # Someone else holds `first`: judging it without a lease is refused, not doubled.
    other = api(make_user("ann2"))
    assert other("get", "/projects/support/comparisons/next").json()["id"] == first.pk
    taken = call("post", f"/comparisons/{first.pk}/judgment", {"choice": "a"})
    assert taken.status_code == 409 and "was not leased to you" in taken.json()["detail"]
    assert Comparison.objects.get(pk=first.pk).judgment_count == 0


def test_only_a_comparison_leased_to_the_caller_and_not_expired_can_be_judged(
    project, annotator, api
):
    """Any open comparison could be judged by id, with a made-up left side recorded."""
    first, second = make_pairs(project, 2)
    call = api(annotator.user)
    stranger = call("post", f"/comparisons/{second.pk}/judgment", {"choice": "a"})
    assert stranger.status_code == 409
    assert stranger.json()["detail"] == (
        f"Comparison {second.pk} was not leased to you: judge what "
        "GET /api/v1/projects/<slug>/comparisons/next hands you."
    )
    leased = call("get", "/projects/support/comparisons/next").json()
    assert leased["id"] == first.pk
    Lease.objects.filter(comparison=first).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = call("post", f"/comparisons/{first.pk}/judgment", {"choice": "a"})
    assert expired.status_code == 409 and "expired" in expired.json()["detail"]
    assert not Judgment.objects.exists()

    again = call("get", "/projects/support/comparisons/next").json()
    judged = call("post", f"/comparisons/{again['id']}/judgment", {"choice": "a"})
    assert judged.status_code == 201
    judgment = Judgment.objects.get()
    # the side recorded is the one the lease showed: "a" as shown is the left response
    assert judgment.choice == judgment.shown_left


def test_input_postgresql_cannot_take_is_a_4xx_not_a_500(project, curator, annotator, api):
    (pair,) = make_pairs(project, 1)
    as_curator, call = api(curator.user), api(annotator.user)
    for body in (
        {"prompt": "a\u0000b", "response": "x"},
        {"prompt": "q", "response": "x", "note": "n\u0000"},
        {"prompt": [{"role": "user", "content": "a\u0000"}], "response": "x"},
        {"prompt": "q", "response": "x", "tags": ["t\u0000"]},
    ):
        refused = as_curator("post", "/projects/support/cases", body)
        assert refused.status_code == 422 and "NUL character" in str(refused.json()["detail"])
    surrogate = as_curator(
        "post", "/projects/support/cases", {"prompt": "a\ud800", "response": "x"}
    )
    assert surrogate.status_code == 422 and "surrogate" in str(surrogate.json()["detail"])
    assert Case.objects.count() == 1  # only make_pairs' case

    for edit in ({"edited": "x\u0000"}, {"rationale": "why\u0000"}):
        refused = call("post", f"/comparisons/{pair.pk}/judgment", {"choice": "a", **edit})
        assert refused.status_code == 422 and "NUL character" in str(refused.json()["detail"])
    assert not Judgment.objects.exists()
    for huge in (2**63, 10**20):
        assert call("post", f"/comparisons/{huge}/judgment", {"choice": "a"}).status_code == 404
    for path in ("/projects/a%00b/comparisons/next", "/projects/a%00b/pairs.jsonl"):
        assert as_curator("get", path).status_code == 404
    assert (
        as_curator("post", "/projects/a%00b/cases", {"prompt": "q", "response": "x"}).status_code
        == 404
    )


def test_a_restricted_project_answers_403_to_non_members(annotator, curator, make_user, api):
    secret = project_create(name="Secret", slug="secret", restricted=True)
    first, second = make_pairs(secret, 2)
    response = api(annotator.user)("get", "/projects/secret/comparisons/next")
    assert response.status_code == 403
    assert response.json() == {"detail": "Project 'secret' is restricted to its members."}
    judged = api(annotator.user)("post", f"/comparisons/{first.pk}/judgment", {"choice": "a"})
    assert judged.status_code == 403
    assert not Lease.objects.exists() and not Judgment.objects.exists()
    # Members (annotators and curators) may: the check is per project, not per role.
    assert api(curator.user)("get", "/projects/secret/comparisons/next").status_code == 403
    member = make_user("member")
    secret.members.add(member, curator.user)
    for user, comparison in ((member, first), (curator.user, second)):
        call = api(user)
        assert call("get", "/projects/secret/comparisons/next").json()["id"] == comparison.pk
        judged = call("post", f"/comparisons/{comparison.pk}/judgment", {"choice": "a"})
        assert judged.status_code == 201
    assert Judgment.objects.count() == 2
    assert api(member)("get", "/projects/nope/comparisons/next").status_code == 404


def test_blind_comparisons_do_not_reveal_origins(project, annotator, api):
    case = case_create(project=project, prompt="q", response="deployed", better_response="human")
    comparison = case.comparisons.get()
    comparison.blind = True
    comparison.save()
    item = api(annotator.user)("get", "/projects/support/comparisons/next").json()
    assert "deployed" not in json.dumps({k: v for k, v in item.items() if k not in ("a", "b")})
    assert set(item) == {"id", "prompt", "a", "b", "lease_expires_at"}


def test_pairs_jsonl_streams_the_export(project, curator, annotator, api):
    case_create(project=project, prompt="q", response="bad", better_response="good")
    comparison = project.comparisons.get()
    call = api(annotator.user)
    item = call("get", "/projects/support/comparisons/next").json()
    choice = "a" if item["a"] == "good" else "b"
    call("post", f"/comparisons/{comparison.pk}/judgment", {"choice": choice})
    response = api(curator.user)("get", "/projects/support/pairs.jsonl")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"prompt": "q", "chosen": "good", "rejected": "bad"}
    ]
    assert call("get", "/projects/support/pairs.jsonl").status_code == 403


def test_the_openapi_schema_lists_the_labelling_endpoints(client, annotator):
    client.force_login(annotator.user)
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert {
        "/api/v1/projects/{slug}/cases",
        "/api/v1/projects/{slug}/comparisons/next",
        "/api/v1/comparisons/{comparison_id}/judgment",
        "/api/v1/projects/{slug}/pairs.jsonl",
    } <= set(paths)


def test_a_case_posted_with_checks_keeps_them_and_a_bad_regex_is_a_422(project, curator, api):
    as_curator = api(curator.user)
    body = {"prompt": "Return window?", "response": "7 days.", "must_include": ["30 days"]}
    created = as_curator("post", "/projects/support/cases", body | {"must_not_include": ["7 days"]})
    assert created.status_code == 201
    case = Case.objects.get(pk=created.json()["id"])
    assert (case.must_include, case.must_not_include) == (["30 days"], ["7 days"])
    bad = as_curator("post", "/projects/support/cases", body | {"must_include": ["/[30/"]})
    assert bad.status_code == 422
    (reason,) = bad.json()["detail"]["must_include"]
    assert "'/[30/' is not a valid regular expression" in reason
    assert Case.objects.count() == 1
