"""A running generation can be cancelled, and one whose worker was killed does not stay
"running": the reaper fails it, keeping the candidates stored before."""

from __future__ import annotations

import pytest

from annotate.models import Response
from rounds import services
from rounds.models import GenerationRequest
from tests.conftest import wait_for
from tests.rounds.conftest import bearer, make_flagged_project, token_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]

# Long enough to be caught running: one case per batch, 300 cases.
LONG = {"n": 16, "temperature": 1.0, "max_new_tokens": 64, "seed": 1}


def _launch_long(client, token: str, slug: str) -> int:
    launched = client.post(
        f"/api/v1/projects/{slug}/generations", LONG, content_type="application/json",
        **bearer(token),
    )  # fmt: skip
    assert launched.status_code == 202, launched.content
    return launched.json()["id"]


def _sampling(generation_id: int) -> GenerationRequest | None:
    generation = GenerationRequest.objects.get(pk=generation_id)
    started = generation.status == "running" and generation.progress.get("step", 0) >= 1
    return generation if started else None


def test_cancel_stops_a_running_generation_and_keeps_what_it_stored(
    client, curator, gpu_worker, base_model
):
    project = make_flagged_project(slug="cancel", flagged=300, heldout=0)
    token = token_for(curator.user)
    gpu_worker()
    generation_id = _launch_long(client, token, project.slug)
    wait_for(lambda: _sampling(generation_id), what="the generation to start sampling")

    asked = client.post(f"/api/v1/generations/{generation_id}/cancel", **bearer(token))
    assert asked.status_code == 202

    def ended():
        generation = GenerationRequest.objects.get(pk=generation_id)
        return generation if generation.is_finished else None

    generation = wait_for(ended, what="the cancel to take effect")
    assert generation.status == "cancelled"
    stored = Response.objects.filter(case__project=project, origin="generated").count()
    assert 0 < stored == generation.candidate_count < 300 * 16


def test_a_killed_worker_leaves_no_generation_running(client, curator, gpu_worker, base_model):
    project = make_flagged_project(slug="killed", flagged=300, heldout=0)
    token = token_for(curator.user)
    worker = gpu_worker()
    generation_id = _launch_long(client, token, project.slug)
    wait_for(lambda: _sampling(generation_id), what="the generation to start sampling")

    worker.kill()
    # The periodic reaper (beat, every minute) fails rows whose heartbeat is older than the
    # stale threshold; here it runs at once with a threshold of zero.
    assert services.generations_reap_stale(older_than_seconds=0) == [generation_id]

    generation = GenerationRequest.objects.get(pk=generation_id)
    assert generation.status == "failed"
    assert "stopped sending heartbeats" in generation.error
    status = client.get(f"/api/v1/generations/{generation_id}", **bearer(token)).json()
    assert status["status"] == "failed" and status["candidates"] == generation.candidate_count
