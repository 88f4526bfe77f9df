"""Candidates sampled by a real Celery worker over Redis, on a tiny local model."""

from __future__ import annotations

import pytest

from annotate.models import Comparison, Response
from tests.conftest import wait_for
from tests.rounds.conftest import bearer, make_flagged_project, token_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]

SETTINGS = {"n": 4, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 12, "seed": 5}


def _generate(client, token: str, slug: str, **payload) -> dict:
    launched = client.post(
        f"/api/v1/projects/{slug}/generations",
        {**SETTINGS, **payload},
        content_type="application/json",
        **bearer(token),
    )
    assert launched.status_code == 202, launched.content
    url = f"/api/v1/generations/{launched.json()['id']}"

    def finished():
        body = client.get(url, **bearer(token)).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    body = wait_for(finished, what="the generation to finish")
    assert body["status"] == "succeeded", body["error"]
    return body


def _candidates(project) -> dict[str, list[str]]:
    return {
        case.prompt: list(
            Response.objects.filter(case=case, origin="generated")
            .order_by("id")
            .values_list("text", flat=True)
        )
        for case in project.cases.order_by("id")
    }


def test_a_worker_stores_n_distinct_candidates_that_every_comparison_covers(
    client, curator, gpu_worker, base_model
):
    project = make_flagged_project(slug="gen-a", flagged=3, heldout=0)
    token = token_for(curator.user)
    gpu_worker()

    body = _generate(client, token, project.slug)

    assert body["progress"]["percent"] == 100 and body["candidates"] == 12
    assert body["comparisons"] == 3 * 8  # per case: bad answer vs 4 + a ring of 4
    for case in project.cases.all():
        bad = case.responses.get(origin="deployed")
        generated = list(Response.objects.filter(case=case, origin="generated"))
        assert len(generated) == 4 and len({r.text.strip() for r in generated}) == 4
        assert {(r.model_name, r.adapter_name) for r in generated} == {(base_model.name, "")}
        comparisons = list(Comparison.objects.filter(case=case))
        for candidate in generated:
            partners = {
                c.response_a_id if c.response_b_id == candidate.pk else c.response_b_id
                for c in comparisons
                if candidate.pk in (c.response_a_id, c.response_b_id)
            }
            assert bad.pk in partners, "a candidate never meets the bad answer"
            assert len(partners - {bad.pk}) >= 1, "a candidate never meets another candidate"
        assert len(comparisons) == 8  # all pairs of the 5 answers would be 10

    client.force_login(curator.user)
    page = client.get(f"/rounds/generations/{body['id']}/")
    assert b"Succeeded" in page.content and b'value="100"' in page.content
    fragment = client.get(f"/rounds/generations/{body['id']}/", HTTP_HX_REQUEST="true")
    assert b"<html" not in fragment.content and b"hx-trigger" not in fragment.content


def test_the_same_seed_gives_the_same_candidates(client, curator, gpu_worker, base_model):
    first = make_flagged_project(slug="seed-a", flagged=2, heldout=0)
    second = make_flagged_project(slug="seed-b", flagged=2, heldout=0)
    other = make_flagged_project(slug="seed-c", flagged=2, heldout=0)
    token = token_for(curator.user)
    gpu_worker()

    _generate(client, token, first.slug)
    _generate(client, token, second.slug)
    _generate(client, token, other.slug, seed=6)

    assert _candidates(first) == _candidates(second)
    assert all(len(texts) == 4 for texts in _candidates(first).values())
    assert _candidates(other) != _candidates(first)
