"""The round page in a real Chromium: it follows its generation live and then goes quiet."""

import time

import pytest

from tests.conftest import login
from tests.rounds.conftest import make_flagged_project

pytestmark = [pytest.mark.browser]


def test_the_round_page_shows_answers_as_they_come_and_stops_polling_when_done(
    live_server, page, curator, base_model
):
    from rounds import services
    from rounds.models import Round
    from training.models import TrainingJob

    project = make_flagged_project(slug="live-round", flagged=2, heldout=1)
    services._round_zero(project=project, actor=curator.user)
    job = TrainingJob.objects.create(  # stands in for a succeeded job: the page reads its id
        project=project, status="succeeded", base_model=str(base_model), data_sha256="0" * 64
    )
    cases = services.round_cases(project=project)
    generation = services.generation_create(
        project=project, actor=curator.user, cases=cases, purpose="round"
    )
    current = Round.objects.create(project=project, number=1, job=job, generation=generation)
    services.generation_claim(generation_id=generation.pk, worker_name="gpu-1@test")

    round_url = f"{live_server.url}/rounds/{current.pk}/"
    polls: list[float] = []
    page.on("request", lambda r: polls.append(time.monotonic()) if r.url == round_url else None)
    login(page, live_server, curator)
    page.goto(round_url)
    assert "the generation is running" in page.inner_text("#round-answers")
    assert "Running" in page.inner_text("#round-live")

    # The worker stores the answers and finishes: the page shows them without a reload.
    for index, case in enumerate(cases):
        services.round_answer_store(current=current, case=case, text=f"new answer {index}")
    services.generation_succeed(generation_id=generation.pk)
    page.wait_for_selector("#round-live[data-generating=false]", timeout=10_000)
    answers = page.inner_text("#round-answers")
    assert "new answer 0" in answers and "new answer 2" in answers
    assert "held-out" in answers and "heldout" not in answers  # one spelling
    assert "Succeeded" in page.inner_text("#round-live")
    assert page.url == round_url
    assert len(polls) >= 2  # the first load, then at least one htmx poll

    # Finished: no more polls.
    settled = len(polls)
    page.wait_for_timeout(2_500)
    assert len(polls) == settled
