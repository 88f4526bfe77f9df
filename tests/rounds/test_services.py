"""Generation requests, candidate storage and round scoring, through the services and the API
(no worker here: the task is queued on commit, and these tests never commit)."""

from __future__ import annotations

import re

import pytest

from annotate.models import Comparison, Response
from rounds import selectors, services
from rounds.models import GenerationRequest, Round, RoundAnswer
from tests.rounds.conftest import bearer, make_flagged_project, token_for


@pytest.mark.parametrize("n", range(1, 9))
def test_comparisons_cover_every_candidate_without_all_pairs(n):
    new = [f"c{i}" for i in range(n)]
    pairs = services.candidate_pairs(bad="bad", new=new, earlier=[])
    met = {c: set() for c in new}
    for x, y in pairs:
        for one, other in ((x, y), (y, x)):
            if one in met:
                met[one].add(other)
    for candidate, others in met.items():
        assert "bad" in others, f"{candidate} never meets the bad answer"
        if n > 1:
            assert others - {"bad"}, f"{candidate} never meets another candidate"
    assert len(pairs) == len(set(map(frozenset, pairs)))  # no pair twice
    all_pairs = n * (n + 1) // 2
    assert len(pairs) <= max(2 * n, 1) and (n < 4 or len(pairs) < all_pairs)


def test_a_lone_candidate_meets_an_earlier_one():
    assert services.candidate_pairs(bad="bad", new=["c"], earlier=["old"]) == [
        ("bad", "c"),
        ("old", "c"),
    ]


def test_stored_candidates_drop_duplicates_and_name_their_model(curator, base_model):
    project = make_flagged_project(flagged=1, heldout=0)
    case = project.cases.get()
    generation = services.generation_create(
        project=project, actor=curator.user, cases=[case], selection={"kind": "flagged"}
    )
    bad = case.responses.get()
    texts = ["x", "y", " x ", bad.text, "", "z\x00"]  # NUL: PostgreSQL text cannot hold it

    stored = services.candidates_store(generation=generation, case=case, texts=texts)

    assert [r.text for r in stored.stored] == ["x", "y", "z"]
    assert stored.duplicates == 3 and stored.comparisons == 6  # bad vs 3 + a ring of 3
    for response in stored.stored:
        assert response.origin == "generated"
        assert response.model_name == base_model.name and response.adapter_name == ""
    comparisons = list(Comparison.objects.filter(case=case))
    assert all(not c.blind for c in comparisons)
    for response in stored.stored:
        partners = {
            c.response_b_id if c.response_a_id == response.pk else c.response_a_id
            for c in comparisons
            if response.pk in (c.response_a_id, c.response_b_id)
        }
        assert bad.pk in partners and len(partners - {bad.pk}) >= 1
    generation.refresh_from_db()
    assert (generation.sampled_count, generation.candidate_count) == (6, 3)
    assert (generation.duplicate_count, generation.comparison_count) == (3, 6)
    # A second batch with the same texts adds nothing: they are duplicates of stored answers.
    again = services.candidates_store(generation=generation, case=case, texts=["x", "z"])
    assert again.stored == [] and again.comparisons == 0


def test_api_launch_is_for_curators_and_names_bad_input(client, curator, annotator, base_model):
    project = make_flagged_project(flagged=2, heldout=1)
    url = f"/api/v1/projects/{project.slug}/generations"
    annotator_token, curator_token = token_for(annotator.user), token_for(curator.user)

    denied = client.post(url, {}, content_type="application/json", **bearer(annotator_token))
    assert denied.status_code == 403 and "detail" in denied.json()

    bad_n = client.post(url, {"n": 0}, content_type="application/json", **bearer(curator_token))
    assert bad_n.status_code == 400 and "'n'" in bad_n.json()["detail"]
    cold = client.post(
        url, {"temperature": 0}, content_type="application/json", **bearer(curator_token)
    )
    assert cold.status_code == 400 and "'temperature'" in cold.json()["detail"]
    missing = client.post(
        url, {"model": "/no/such/model"}, content_type="application/json", **bearer(curator_token)
    )
    assert missing.status_code == 400 and "/no/such/model" in missing.json()["detail"]
    typo = client.post(url, {"temprature": 1}, content_type="application/json",
                       **bearer(curator_token))  # fmt: skip
    assert typo.status_code == 422
    foreign = client.post(
        url, {"case_ids": [999999]}, content_type="application/json", **bearer(curator_token)
    )
    assert foreign.status_code == 400 and "999999" in foreign.json()["detail"]

    launched = client.post(
        url,
        {"filter": {"split": "heldout"}, "n": 3, "seed": 7},
        content_type="application/json",
        **bearer(curator_token),
    )
    assert launched.status_code == 202
    generation = GenerationRequest.objects.get(pk=launched.json()["id"])
    assert [c.split for c in generation.cases.all()] == ["heldout"]

    default = client.post(url, content_type="application/json", **bearer(curator_token))
    assert default.status_code == 202
    status = client.get(f"/api/v1/generations/{default.json()['id']}", **bearer(curator_token))
    body = status.json()
    assert body["status"] == "queued" and body["selection"] == {"kind": "flagged"}
    assert body["settings"] == {
        "n": 4, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 128, "seed": 0,
    }  # fmt: skip
    assert body["progress"]["total"] == 2
    hidden = client.get(f"/api/v1/generations/{default.json()['id']}", **bearer(annotator_token))
    assert hidden.status_code == 403


def test_cancel_of_a_queued_generation_ends_it(client, curator, base_model):
    project = make_flagged_project(flagged=1, heldout=0)
    token = token_for(curator.user)
    launched = client.post(
        f"/api/v1/projects/{project.slug}/generations",
        content_type="application/json",
        **bearer(token),
    )
    generation_id = launched.json()["id"]
    cancelled = client.post(f"/api/v1/generations/{generation_id}/cancel", **bearer(token))
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/generations/{generation_id}/cancel", **bearer(token))
    assert again.status_code == 409
    assert services.generation_claim(generation_id=generation_id, worker_name="w") is None


def test_a_worker_that_stops_heartbeating_is_reaped(curator, base_model):
    project = make_flagged_project(flagged=1, heldout=0)
    generation = services.generation_create(
        project=project, actor=curator.user, cases=list(project.cases.all())
    )
    services.generation_claim(generation_id=generation.pk, worker_name="gpu-1@host")
    assert services.generations_reap_stale(older_than_seconds=3600) == []
    assert services.generations_reap_stale(older_than_seconds=0) == [generation.pk]
    generation.refresh_from_db()
    assert generation.status == "failed" and "gpu-1@host" in generation.error


def _round_with_answers(project, curator, count: int, number: int = 1) -> Round:
    """A round whose generation already ran: the first ``count`` cases got a new answer.

    The job row stands in for a finished training job: these tests read only its status."""
    from training.models import TrainingJob

    services._round_zero(project=project, actor=curator)
    job = TrainingJob.objects.create(
        project=project, status="succeeded", base_model="m", data_sha256="0" * 64
    )
    generation = services.generation_create(
        project=project, actor=curator, cases=list(project.cases.all()), purpose="round"
    )
    current = Round.objects.create(project=project, number=number, job=job, generation=generation)
    for index, case in enumerate(project.cases.order_by("id")[:count]):
        services.round_answer_store(
            current=current, case=case, text=f"answer {index} of round {number}"
        )
    return current


def test_round_comparisons_are_blind_with_sides_drawn_at_random(curator, base_model):
    project = make_flagged_project(flagged=40, heldout=0)
    first = _round_with_answers(project, curator.user, 40)
    answers = list(RoundAnswer.objects.filter(round=first).select_related("comparison"))
    assert len(answers) == 40 and all(a.comparison.blind for a in answers)
    sides = [a.new_side for a in answers]
    # 40 fair coin flips: all on one side has probability 2^-39.
    assert 0 < sides.count("a") < 40
    for answer in answers:
        new_id = getattr(answer.comparison, f"response_{answer.new_side}_id")
        assert new_id == answer.response_id
        assert answer.previous_response.origin == "deployed"


def test_an_unchanged_answer_is_not_asked_about_and_counts_as_a_tie(curator, base_model):
    from annotate.models import Case

    project = make_flagged_project(flagged=1, heldout=0)
    case = Case.objects.get(project=project)
    zero = services._round_zero(project=project, actor=curator.user)
    first = _round_with_answers(project, curator.user, 0)
    answer = services.round_answer_store(
        current=first, case=case, text=case.responses.get().text + "\n"
    )
    assert zero.answers.count() == 1
    assert answer.unchanged and answer.comparison is None
    assert selectors.round_outcomes(current=first) == [0.5]


def test_every_judgment_counts_in_the_win_rate(curator, make_annotators, base_model):
    """Overlap 2, two annotators, six cases: the hand-computed fixture of the docstring.

    annotator 1: new, new, new, previous, tie, both bad  -> 1 + 1 + 1 + 0 + ½ + ½ = 4
    annotator 2: new, new, previous, previous, new, tie  -> 1 + 1 + 0 + 0 + 1 + ½ = 3.5
    7.5 wins of 12: rate .625, Wilson 95% [.3544, .8350].
    """
    from annotate.services import judgment_submit

    project = make_flagged_project(flagged=4, heldout=2, overlap=2)
    first = _round_with_answers(project, curator.user, 6)
    plans = (
        ("new", "new", "new", "previous", "tie", "both_bad"),
        ("new", "new", "previous", "previous", "new", "tie"),
    )
    answers = list(RoundAnswer.objects.filter(round=first).order_by("case_id"))
    for annotator, plan in zip(make_annotators(2), plans, strict=True):
        for answer, wish in zip(answers, plan, strict=True):
            old_side = "b" if answer.new_side == "a" else "a"
            choice = {"new": answer.new_side, "previous": old_side}.get(wish, wish)
            judgment_submit(comparison=answer.comparison, annotator=annotator, choice=choice)

    row = selectors.rounds_timeline(project=project)[1]
    assert row.win_rate.total == 12 and row.win_rate.wins == 7.5 and row.win_rate.rate == 0.625
    assert (round(row.win_rate.low, 4), round(row.win_rate.high, 4)) == (0.3544, 0.8350)
    assert row.judged == row.comparisons == 6 and row.fully_judged
    # Case 4 lost twice; case 3 split 1-1 (not a majority); case 6 had one "both bad" of two.
    assert [c.pk for c in row.still_failing] == [answers[3].case_id]


@pytest.fixture
def make_annotators(db):
    from accounts.services import user_create

    def make(count: int) -> list:
        return [
            user_create(username=f"judge{i}", role="annotator", password="Judge-pw-123!")[0]
            for i in range(count)
        ]

    return make


def test_rounds_pages_are_for_curators_only(client, curator, annotator, base_model):
    project = make_flagged_project(flagged=1, heldout=0)
    client.force_login(annotator.user)
    for url in (
        f"/rounds/project/{project.slug}/",
        f"/rounds/project/{project.slug}/generate/",
    ):
        assert client.get(url).status_code == 403
    client.force_login(curator.user)
    page = client.get(f"/rounds/project/{project.slug}/")
    assert page.status_code == 200 and b"Next round" in page.content
    form = client.get(f"/rounds/project/{project.slug}/generate/")
    assert form.status_code == 200


def test_the_form_launches_for_one_case_and_refuses_an_empty_filter(client, curator, base_model):
    project = make_flagged_project(flagged=2, heldout=0)
    case = project.cases.order_by("id").last()
    client.force_login(curator.user)
    url = f"/rounds/project/{project.slug}/generate/"
    fields = {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 3}
    empty = client.post(url, {"scope": "filter", "tag": "nothing-has-it", **fields})
    assert empty.status_code == 400 and b"no cases selected" in empty.content
    launched = client.post(url, {"scope": "case", "case_id": case.pk, **fields})
    assert launched.status_code == 302
    generation = GenerationRequest.objects.get()
    assert list(generation.cases.all()) == [case] and generation.n == 2
    assert launched["Location"] == f"/rounds/generations/{generation.pk}/"
    page = client.get(launched["Location"])
    assert b"Queued" in page.content and b"0 of 1 cases" in page.content
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.content.decode()))
    assert "queued queued" not in words.lower() and "Queued waiting for a GPU worker" in words


def test_round_zero_takes_the_rejected_side_of_an_imported_pair(curator, base_model):
    from annotate.services import cases_import, project_create

    project = project_create(name="Imported", slug="imported")
    cases_import(
        project=project,
        file_name="pairs.jsonl",
        data=b'{"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}\n',
    )
    case = project.cases.get()
    bad = services.original_bad_answer(case, list(Response.objects.filter(case=case)))
    assert bad.text == "bad answer"


def test_more_than_two_rounds_add_a_bradley_terry_fit(client, curator, make_annotators, base_model):
    """Round 1 beats round 0 in 3 of 4 cases, round 2 beats round 1 in 4 of 4."""
    from annotate.services import judgment_submit
    from rounds.winrate import bradley_terry_win_rates

    project = make_flagged_project(flagged=4, heldout=0)
    (judge,) = make_annotators(1)
    games = []
    for number, plan in ((1, (1, 1, 1, 0)), (2, (1, 1, 1, 1))):
        current = _round_with_answers(project, curator.user, 4, number=number)
        for answer, won in zip(current.answers.order_by("case_id"), plan, strict=True):
            old_side = "b" if answer.new_side == "a" else "a"
            choice = answer.new_side if won else old_side
            judgment_submit(comparison=answer.comparison, annotator=judge, choice=choice)
            games.append((number, number - 1, float(won)))

    rows = selectors.rounds_timeline(project=project)
    assert [row.round.number for row in rows] == [0, 1, 2]
    assert rows[1].win_rate.rate == 0.75 and rows[2].win_rate.rate == 1.0
    expected = bradley_terry_win_rates(games, 3)
    assert rows[1].bradley_terry == expected[1] and rows[2].bradley_terry == expected[2]
    assert rows[0].win_rate is None and rows[0].bradley_terry is None

    client.force_login(curator.user)
    page = client.get(f"/rounds/project/{project.slug}/").content.decode()
    assert "Bradley–Terry (all rounds)" in page
    assert "75% (" in page and "100% (" in page


def test_the_rounds_page_costs_the_same_queries_for_more_cases(client, curator, base_model):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(curator.user)
    counts = []
    for slug, cases in (("small", 2), ("large", 8)):
        project = make_flagged_project(slug=slug, flagged=cases, heldout=0)
        _round_with_answers(project, curator.user, cases)
        client.get(f"/rounds/project/{slug}/")  # warm the session and role caches
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/rounds/project/{slug}/").status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_next_round_refuses_a_job_that_is_not_ready(client, curator, base_model):
    from training.models import TrainingJob

    project = make_flagged_project(flagged=1, heldout=0)
    failed = TrainingJob.objects.create(
        project=project, status="failed", base_model="m", data_sha256="0" * 64
    )
    client.force_login(curator.user)
    for job in ("abc", str(failed.pk), ""):
        response = client.post(f"/rounds/project/{project.slug}/next/", {"job": job}, follow=True)
        assert b"Pick a succeeded job" in response.content
    assert not Round.objects.exists()


def test_a_job_stacked_on_a_deployed_adapter_samples_from_both_combined(
    curator, base_model, artifact_root
):
    from training.artifacts import job_dir
    from training.models import TrainingJob

    project = make_flagged_project(flagged=1, heldout=0)
    stacked = {"path": "/adapters/deployed", "combined": "combined", "combined_rank": 24}
    job = TrainingJob.objects.create(
        project=project, status="succeeded", base_model=str(base_model), data_sha256="0" * 64,
        adapter="/adapters/deployed", report={"stacked_on_adapter": stacked},
    )  # fmt: skip
    combined = job_dir(job.pk) / "adapter" / "combined"
    combined.mkdir(parents=True)
    (combined / "adapter_config.json").write_text('{"r": 24}')
    (combined / "adapter_model.safetensors").write_bytes(b"weights")
    assert services.job_adapter_path(job) == str(combined)

    job.report = {"stacked_on_adapter": {**stacked, "combined": None,
                                         "combined_refused": "adapter sets use_dora"}}  # fmt: skip
    with pytest.raises(services.GenerationRefused, match=r"into one adapter.*use_dora"):
        services.job_adapter_path(job)


def test_the_generation_page_answers_htmx_with_its_fragment_and_a_history_restore_whole(
    curator, curator_client, base_model
):
    from django.urls import reverse

    project = make_flagged_project(flagged=1, heldout=0)
    generation = services.generation_create(
        project=project, actor=curator.user, cases=list(project.cases.all())
    )
    url = reverse("rounds:generation_detail", args=[generation.pk])
    page = curator_client.get(url).content
    fragment = curator_client.get(url, headers={"HX-Request": "true"}).content
    restored = curator_client.get(  # the back button after htmx's history cache missed
        url, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    ).content
    assert b"<html" in page and b"<html" not in fragment and b"<html" in restored


def test_a_case_with_checks_is_still_failing_when_its_new_answer_fails_them(
    curator, make_annotators, base_model
):
    """The job report's rule: no judgment needed for a case with checks; without checks the
    blind judgments decide, as before."""
    from annotate.models import Case
    from annotate.services import case_set_checks, judgment_submit

    project = make_flagged_project(flagged=3, heldout=0)
    cases = list(Case.objects.filter(project=project).order_by("id"))
    case_set_checks(case=cases[0], must_include=["round 1"], must_not_include=[])
    case_set_checks(case=cases[1], must_include=["30 days"], must_not_include=[])
    first = _round_with_answers(project, curator.user, 3)  # "answer N of round 1"
    row = selectors.rounds_timeline(project=project)[1]
    assert [c.pk for c in row.still_failing] == [cases[1].pk]  # lacks "30 days"; nobody judged

    # the case without checks fails only by its judgments: lost to the previous answer
    (annotator,) = make_annotators(1)
    answer = RoundAnswer.objects.get(round=first, case=cases[2])
    previous_side = "b" if answer.new_side == "a" else "a"
    judgment_submit(comparison=answer.comparison, annotator=annotator, choice=previous_side)
    row = selectors.rounds_timeline(project=project)[1]
    assert [c.pk for c in row.still_failing] == [cases[1].pk, cases[2].pk]
