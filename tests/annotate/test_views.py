"""The annotation pages as users meet them: roles, the compare page and its fragment, uploads."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.urls import reverse

from accounts.services import user_create
from annotate import services
from annotate.models import Case, Comparison, Judgment, Lease, Project

HX = {"HX-Request": "true"}
XSS = "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>"


@pytest.fixture
def project(db):
    project = services.project_create(
        name="Support bot", slug="support", guidelines="Prefer **correct** answers."
    )
    for n in range(3):
        services.case_create(
            project=project,
            prompt=f"Question {n}?",
            response=f"Deployed answer {n}",
            better_response=f"Better answer {n}",
            tags=["billing"] if n == 0 else [],
        )
    return project


def _make_user(username: str, role: str = "annotator"):
    user, _ = user_create(username=username, role=role, password=f"{username}-Secret-pw-1")
    return user


def _ticket(html: str) -> str:
    return re.search(r'name="ticket" value="([^"]+)"', html).group(1)


def _shown_pair(client, project) -> tuple[Comparison, str, str]:
    """GET the compare page; returns (comparison shown, its shown_left, the ticket)."""
    html = client.get(reverse("compare", args=[project.slug])).content.decode()
    lease = Lease.objects.get(comparison__project=project)
    return lease.comparison, lease.shown_left, _ticket(html)


# --- roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["project_report", "case_list", "case_upload", "project_settings"])
def test_annotators_get_403_on_every_curator_page(annotator_client, project, name):
    url = reverse(name, args=[project.slug])
    assert annotator_client.get(url).status_code == 403
    assert annotator_client.post(url, {"name": "hijacked", "overlap": 5}).status_code == 403
    project.refresh_from_db()
    assert project.name == "Support bot" and project.overlap == 1


def test_annotators_may_not_create_projects(annotator_client):
    url = reverse("project_create")
    assert annotator_client.get(url).status_code == 403
    assert annotator_client.post(url, {"name": "X", "slug": "x", "overlap": 1}).status_code == 403
    assert not Project.objects.filter(slug="x").exists()


def test_a_restricted_project_is_closed_to_non_members(annotator_client, annotator, project):
    services.project_update(project=project, restricted=True)
    assert annotator_client.get(reverse("compare", args=[project.slug])).status_code == 403
    assert "Support bot" not in annotator_client.get("/").content.decode()
    services.project_update(project=project, members=[annotator.user])
    assert annotator_client.get(reverse("compare", args=[project.slug])).status_code == 200


# --- home ----------------------------------------------------------------------------------


def test_home_shows_waiting_counts_and_start_links(annotator_client, project):
    html = annotator_client.get("/").content.decode()
    assert "Support bot" in html
    assert re.search(r"<b class=\"waiting\">3</b> comparisons waiting for you", html)
    assert reverse("compare", args=[project.slug]) in html and "Start labelling" in html
    assert "New project" not in html
    assert reverse("project_report", args=[project.slug]) not in html


def test_home_lists_many_projects_with_few_queries(
    annotator_client, project, django_assert_max_num_queries
):
    for n in range(10):
        other = services.project_create(name=f"Project {n}", slug=f"project-{n}")
        services.case_create(project=other, prompt="Q", response="bad", better_response="good")
    with django_assert_max_num_queries(6):
        html = annotator_client.get("/").content.decode()
    assert html.count("Start labelling") == 11
    assert html.count("1</b> comparison waiting for you") == 10


def test_home_gives_curators_project_management_links(curator_client, project):
    html = curator_client.get("/").content.decode()
    assert "New project" in html and reverse("project_create") in html
    for name in ("project_report", "case_list", "case_upload", "project_settings"):
        assert reverse(name, args=[project.slug]) in html
    export = f"/api/v1/projects/{project.slug}/pairs.jsonl"
    assert export in html
    assert curator_client.get(export).status_code == 200  # the link works with the session


def test_curator_creates_a_project(curator_client):
    response = curator_client.post(
        reverse("project_create"),
        {"name": "Legal", "slug": "legal", "guidelines": "Be exact.", "overlap": 2},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("case_upload", args=["legal"])
    again = curator_client.post(
        reverse("project_create"), {"name": "Legal 2", "slug": "legal", "overlap": 1}
    )
    assert "already exists" in again.content.decode()


# --- the compare page ----------------------------------------------------------------------


def test_compare_page_and_its_fragment_come_from_one_view(annotator_client, project):
    url = reverse("compare", args=[project.slug])
    full = annotator_client.get(url)
    assert "HX-Request" in full["Vary"]
    html = full.content.decode()
    assert html.lstrip().startswith("<!doctype html>")
    assert 'id="pair"' in html and "Guidelines" in html and "<strong>correct</strong>" in html
    assert "js/compare.js" in html
    fragment = annotator_client.get(url, headers=HX).content.decode()
    assert fragment.lstrip().startswith('<section id="pair"')
    assert "<html" not in fragment and "Guidelines" not in fragment
    # The same pair under the same lease: a reload does not deal a new one.
    assert Lease.objects.count() == 1


def test_sides_follow_the_lease_and_the_prompt_is_shown(annotator_client, project):
    comparison, shown_left, _ = _shown_pair(annotator_client, project)
    html = annotator_client.get(reverse("compare", args=[project.slug])).content.decode()
    left = comparison.response_a if shown_left == "a" else comparison.response_b
    right = comparison.response_b if shown_left == "a" else comparison.response_a
    assert html.index(left.text) < html.index(right.text)
    assert comparison.case.prompt in html


def test_response_html_and_script_show_as_text(annotator_client, project):
    Case.objects.all().delete()
    services.case_create(project=project, prompt="Say hi", response=XSS, better_response="Hi!")
    html = annotator_client.get(reverse("compare", args=[project.slug])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "onerror=alert(1)>" not in html


def test_chat_prompts_show_the_system_prompt(annotator_client, project):
    Case.objects.all().delete()
    services.case_create(
        project=project,
        prompt=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?"},
        ],
        response="France's capital is Paris, a city of...",
        better_response="Paris.",
    )
    html = annotator_client.get(reverse("compare", args=[project.slug])).content.decode()
    assert "system prompt" in html and "You are terse." in html
    assert "Capital of France?" in html


def test_annotators_never_see_where_an_answer_came_from(annotator_client, project):
    # Knowing which side is the human correction or the deployed model biases the judgment.
    html = annotator_client.get(reverse("compare", args=[project.slug])).content.decode()
    assert "deployed model" not in html and 'class="badge origin"' not in html


def test_curators_reviewing_see_the_origin_except_on_blind_comparisons(curator_client, project):
    html = curator_client.get(reverse("compare", args=[project.slug])).content.decode()
    assert "deployed model" in html  # an ordinary comparison says where each answer came from
    Comparison.objects.update(blind=True)
    html = curator_client.get(reverse("compare", args=[project.slug])).content.decode()
    assert "deployed model" not in html and 'class="badge origin"' not in html


def test_a_judgment_records_the_screen_order_and_brings_the_next_pair(
    annotator_client, annotator, project
):
    comparison, shown_left, ticket = _shown_pair(annotator_client, project)
    response = annotator_client.post(
        reverse("judge", args=[project.slug]), {"ticket": ticket, "pick": "left"}, headers=HX
    )
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert "Saved: A better." in html
    judgment = Judgment.objects.get(annotator=annotator.user)
    assert judgment.comparison == comparison
    assert judgment.shown_left == shown_left
    assert judgment.choice == shown_left  # the left side is the response shown on the left
    assert judgment.duration_ms is not None and judgment.duration_ms >= 0
    next_lease = Lease.objects.get(annotator=annotator.user)
    assert next_lease.comparison != comparison
    assert _ticket(html) != ticket


def test_right_tie_and_both_bad_map_to_the_comparisons_choices(
    annotator_client, annotator, project
):
    url = reverse("judge", args=[project.slug])
    expected = []
    for pick in ("right", "tie", "both_bad"):
        _, shown_left, ticket = _shown_pair(annotator_client, project)
        annotator_client.post(url, {"ticket": ticket, "pick": pick}, headers=HX)
        other = "b" if shown_left == "a" else "a"
        expected.append({"right": other}.get(pick, pick))
    choices = list(Judgment.objects.order_by("id").values_list("choice", flat=True))
    assert choices == expected


def test_saving_a_correct_answer_stores_it_as_a_human_response(
    annotator_client, annotator, project
):
    comparison, _, ticket = _shown_pair(annotator_client, project)
    annotator_client.post(
        reverse("judge", args=[project.slug]),
        {"ticket": ticket, "pick": "right", "edited": "  The corrected answer.  "},
        headers=HX,
    )
    judgment = Judgment.objects.get(annotator=annotator.user)
    assert judgment.edited == "The corrected answer."
    assert judgment.corrected_response.text == "The corrected answer."
    assert judgment.corrected_response.origin == "human"


def test_undo_brings_the_pair_back_with_what_was_written_and_picked(
    annotator_client, annotator, project
):
    comparison, shown_left, ticket = _shown_pair(annotator_client, project)
    annotator_client.post(
        reverse("judge", args=[project.slug]), {"ticket": ticket, "pick": "right"}, headers=HX
    )
    html = annotator_client.post(reverse("undo", args=[project.slug]), headers=HX).content.decode()
    assert "Undone: B better" in html
    assert not Judgment.objects.exists()
    # A plain vote undone leaves the editor as new: empty, no side picked.
    assert re.search(r"<textarea[^>]*></textarea>", html)
    assert " checked" not in html
    assert Lease.objects.get(annotator=annotator.user).comparison == comparison

    ticket = _ticket(html)
    annotator_client.post(
        reverse("judge", args=[project.slug]),
        {"ticket": ticket, "pick": "both_bad", "edited": "Fixed text."},
        headers=HX,
    )
    html = annotator_client.post(reverse("undo", args=[project.slug]), headers=HX).content.decode()
    assert re.search(r"<textarea[^>]*>Fixed text.</textarea>", html)
    assert re.search(r'value="both_bad" required checked', html)
    nothing = annotator_client.post(reverse("undo", args=[project.slug]), headers=HX)
    assert "Nothing to undo." in nothing.content.decode()


def test_a_correct_answer_without_a_side_is_refused_not_counted_for_a(
    annotator_client, annotator, project
):
    _, _, ticket = _shown_pair(annotator_client, project)
    refused = annotator_client.post(
        reverse("judge", args=[project.slug]),
        {"ticket": ticket, "edited": "The corrected answer."},
        headers=HX,
    )
    assert "Say which answer was better" in refused.content.decode()
    assert not Judgment.objects.exists()
    plain = annotator_client.post(
        reverse("judge", args=[project.slug]), {"ticket": ticket, "edited": "The answer."}
    )
    assert plain.status_code == 400 and not Judgment.objects.exists()


def test_without_htmx_a_judgment_redirects_back_to_the_page(annotator_client, project):
    _, _, ticket = _shown_pair(annotator_client, project)
    response = annotator_client.post(
        reverse("judge", args=[project.slug]), {"ticket": ticket, "pick": "tie"}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("compare", args=[project.slug])
    assert Judgment.objects.get().choice == "tie"


def test_a_forged_or_foreign_ticket_writes_nothing(annotator_client, project):
    _, _, ticket = _shown_pair(annotator_client, project)
    url = reverse("judge", args=[project.slug])
    forged = annotator_client.post(url, {"ticket": ticket + "x", "pick": "left"}, headers=HX)
    assert "out of date" in forged.content.decode()
    other = _make_user("otto")
    annotator_client.force_login(other)
    foreign = annotator_client.post(url, {"ticket": ticket, "pick": "left"}, headers=HX)
    assert "someone else" in foreign.content.decode()
    assert not Judgment.objects.exists()


def test_a_conflicting_second_judgment_is_refused_with_a_message(
    annotator_client, annotator, project
):
    _, _, ticket = _shown_pair(annotator_client, project)
    url = reverse("judge", args=[project.slug])
    annotator_client.post(url, {"ticket": ticket, "pick": "left"}, headers=HX)
    again = annotator_client.post(url, {"ticket": ticket, "pick": "right"}, headers=HX)
    assert "undo it first" in again.content.decode()
    assert Judgment.objects.count() == 1


def test_when_nothing_is_left_the_page_says_so(annotator_client, project):
    url = reverse("judge", args=[project.slug])
    for _ in range(3):
        _, _, ticket = _shown_pair(annotator_client, project)
        annotator_client.post(url, {"ticket": ticket, "pick": "left"}, headers=HX)
    html = annotator_client.get(reverse("compare", args=[project.slug])).content.decode()
    assert "Nothing left to judge" in html


# --- curator pages -------------------------------------------------------------------------


def test_upload_with_a_bad_line_names_it_and_writes_nothing(curator_client, project):
    before = Case.objects.count()
    data = (
        b'{"prompt": "ok", "response": "fine"}\n'
        b'{"prompt": "", "response": "x"}\n'
        b'{"prompt": "ok", "response_a": "x"}\n'
    )
    response = curator_client.post(
        reverse("case_upload", args=[project.slug]),
        {"file": SimpleUploadedFile("cases.jsonl", data)},
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert "Nothing was written" in html
    assert "line 2:" in html and "line 3:" in html and "line 1:" not in html
    assert Case.objects.count() == before


def test_upload_imports_a_good_file(curator_client, project):
    data = (
        b'{"prompt": "p1", "response": "bad", "better_response": "good"}\n'
        b'{"prompt": "p2", "chosen": "yes", "rejected": "no"}\n'
    )
    response = curator_client.post(
        reverse("case_upload", args=[project.slug]),
        {"file": SimpleUploadedFile("cases.jsonl", data)},
        follow=True,
    )
    html = response.content.decode()
    assert "Imported cases.jsonl: 2 cases, 2 comparisons (1 of them already labelled)" in html
    assert Case.objects.filter(project=project).count() == 5


@override_settings(PATCHWISE_MAX_UPLOAD_BYTES=100)
def test_upload_of_a_too_big_file_says_the_limit(curator_client, project):
    data = b'{"prompt": "p", "response": "r"}\n' * 10
    response = curator_client.post(
        reverse("case_upload", args=[project.slug]),
        {"file": SimpleUploadedFile("big.jsonl", data)},
    )
    html = response.content.decode()
    assert "big.jsonl is 330\xa0bytes; the limit is 100\xa0bytes." in html
    assert "Split it into smaller files" in html
    assert Case.objects.filter(project=project).count() == 3


def test_case_list_filters_and_pages_with_few_queries(
    curator_client, project, django_assert_max_num_queries
):
    for n in range(30):
        services.case_create(project=project, prompt=f"Extra {n}", split="heldout")
    url = reverse("case_list", args=[project.slug])
    with django_assert_max_num_queries(8):
        html = curator_client.get(url).content.decode()
    assert "33 cases" in html and "page 1 of 2" in html
    assert 'href="?page=2" hx-get="?page=2"' in html
    tagged = curator_client.get(url, {"tag": "billing"}).content.decode()
    assert "1 case<" in tagged and "Question 0?" in tagged
    flagged = curator_client.get(url, {"flagged": "yes"}, headers=HX).content.decode()
    assert flagged.lstrip().startswith('<section id="cases"') and "3 cases" in flagged
    restored = curator_client.get(
        url, {"flagged": "yes"}, headers={**HX, "HX-History-Restore-Request": "true"}
    ).content.decode()
    assert restored.lstrip().startswith("<!doctype html>")  # back button after a cache miss
    heldout = curator_client.get(url, {"split": "heldout", "page": "2"}).content.decode()
    assert "30 cases" in heldout and "page 2 of 2" in heldout


def test_case_list_filters_judged_cases(curator_client, annotator_client, project):
    _, _, ticket = _shown_pair(annotator_client, project)
    annotator_client.post(
        reverse("judge", args=[project.slug]), {"ticket": ticket, "pick": "left"}, headers=HX
    )
    curator_client.force_login(_make_user("cora", "curator"))
    url = reverse("case_list", args=[project.slug])
    assert "1 case<" in curator_client.get(url, {"judged": "yes"}).content.decode()
    assert "2 cases" in curator_client.get(url, {"judged": "no"}).content.decode()


def test_report_shows_progress_agreement_and_left_bias(
    curator_client, project, django_assert_max_num_queries
):
    services.project_update(project=project, overlap=2)
    # Both pick the human answer (response b) on the first two pairs; on the third, ann does
    # again and bob calls it a tie. Units (b,b), (b,b), (b,tie):
    # kappa: p_o = 2/3, p_e = 1 * 2/3 = 2/3, so 0; alpha: 1 - 5 * 2 / (5*1 + 1*5) = 0.
    plans = {"ann": ["human", "human", "human"], "bob": ["human", "human", "tie"]}
    for username, plan in plans.items():
        client = Client()
        client.force_login(_make_user(username))
        for wanted in plan:
            comparison, shown_left, ticket = _shown_pair_for(client, project, username)
            better = "a" if comparison.response_a.origin == "human" else "b"
            pick = "tie" if wanted == "tie" else ("left" if better == shown_left else "right")
            client.post(
                reverse("judge", args=[project.slug]), {"ticket": ticket, "pick": pick}, headers=HX
            )
    with django_assert_max_num_queries(8):
        html = curator_client.get(reverse("project_report", args=[project.slug])).content.decode()
    assert "<b>6</b> of 6 judgments" in html
    assert "<b>3</b> fully judged" in html
    assert "<b>0.00</b> Krippendorff" in html
    assert re.search(r"<td>ann · bob</td><td>3</td><td>0.00</td>", html)
    # Left-side shares are out of each annotator's a/b picks: 3 for ann, 2 for bob.
    assert "of 3)" in html and "of 2)" in html


def _shown_pair_for(client, project, username):
    html = client.get(reverse("compare", args=[project.slug])).content.decode()
    lease = Lease.objects.get(comparison__project=project, annotator__username=username)
    return lease.comparison, lease.shown_left, _ticket(html)


def test_curator_edits_the_project_settings(curator_client, annotator, project):
    url = reverse("project_settings", args=[project.slug])
    assert "Prefer **correct** answers." in curator_client.get(url).content.decode()
    response = curator_client.post(
        url,
        {
            "name": "Support bot v2",
            "guidelines": "New rules.",
            "overlap": 2,
            "restricted": "on",
            "members": [annotator.user.pk],
        },
    )
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.name, project.guidelines, project.overlap, project.restricted) == (
        "Support bot v2",
        "New rules.",
        2,
        True,
    )
    # the curator who restricted it stays a member: they would have locked themself out
    assert sorted(project.members.values_list("username", flat=True)) == ["anna", "carla"]
    bad = curator_client.post(url, {"name": "x", "overlap": 0})
    assert bad.status_code == 400 and "errorlist" in bad.content.decode()
