"""The case page: curators write a case's checks, preview them on its answers, save them."""

from django.urls import reverse

from accounts.models import AuditEvent
from annotate import services


def _case(project):
    case = services.case_create(
        project=project,
        prompt="How long do I have to return the Summit boots?",
        response="You can return them within 7 days.",
        better_response="Our return window for the Summit boots is 30 days from delivery.",
    )
    return case


def test_the_preview_marks_the_phrases_that_decide_each_answer(curator_client, project):
    case = _case(project)
    url = reverse("case_checks_preview", args=[project.slug, case.pk])
    body = {"must_include": "30 DAYS", "must_not_include": "/\\b7 days/"}
    fragment = curator_client.post(url, body, headers={"HX-Request": "true"})
    html = fragment.content.decode()
    assert fragment.status_code == 200 and not html.lstrip().startswith("<!doctype")
    assert '<mark class="hit-include" title="must contain 30 DAYS">30 days</mark>' in html
    assert '<mark class="hit-exclude" title="must not contain /\\b7 days/">7 days</mark>' in html
    assert html.count('<span class="badge good">passes</span>') == 1
    assert "contains /\\b7 days/" in html and "lacks &#x27;30 DAYS&#x27;" in html
    case.refresh_from_db()
    assert case.must_include == [] and case.must_not_include == []  # a preview saves nothing


def test_saving_checks_and_a_bad_regex_refused_with_the_reason(curator_client, project):
    case = _case(project)
    url = reverse("case_detail", args=[project.slug, case.pk])
    bad = curator_client.post(url, {"must_include": "30 days\n/(30/", "must_not_include": ""})
    assert bad.status_code == 400
    assert "must_include item 2 &#x27;/(30/&#x27; is not a valid regular expression" in (
        bad.content.decode()
    )
    case.refresh_from_db()
    assert case.must_include == []
    # the preview names the bad regex in place too (htmx swaps only 2xx answers)
    preview = curator_client.post(
        reverse("case_checks_preview", args=[project.slug, case.pk]),
        {"must_include": "/(30/"},
        headers={"HX-Request": "true"},
    )
    assert (
        preview.status_code == 200 and "not a valid regular expression" in preview.content.decode()
    )

    saved = curator_client.post(url, {"must_include": "30 days\n", "must_not_include": "7 days"})
    assert saved.status_code == 302
    case.refresh_from_db()
    assert (case.must_include, case.must_not_include) == (["30 days"], ["7 days"])
    event = AuditEvent.objects.get(action="case.checks")
    assert event.new_value == {"must_include": ["30 days"], "must_not_include": ["7 days"]}
    page = curator_client.get(url).content.decode()
    assert "30 days\n</textarea>" in page or ">\n30 days</textarea>" in page
    listing = curator_client.get(reverse("case_list", args=[project.slug])).content.decode()
    assert url in listing and 'title="has checks"' in listing


def test_annotators_may_not_read_or_write_checks(annotator_client, project):
    case = _case(project)
    for name in ("case_detail", "case_checks_preview"):
        url = reverse(name, args=[project.slug, case.pk])
        assert annotator_client.post(url, {"must_include": "x"}).status_code == 403
    case.refresh_from_db()
    assert case.must_include == []


def test_an_annotator_ticks_the_phrases_that_matter_in_their_correct_answer(
    annotator_client, project
):
    import re

    case = _case(project)
    page = annotator_client.get(reverse("compare", args=[project.slug])).content.decode()
    ticket = re.search(r'name="ticket" value="([^"]+)"', page).group(1)
    assert 'name="key_phrases"' in page and "data-add-phrase" in page
    answer = "The Summit boots can go back within 30 days of delivery, unworn."
    judge = reverse("judge", args=[project.slug])

    wrong = annotator_client.post(
        judge, {"ticket": ticket, "pick": "right", "edited": answer, "key_phrases": "60 days"}
    )
    assert wrong.status_code == 400 and "“60 days” is not in your correct answer" in (
        wrong.content.decode()
    )
    case.refresh_from_db()
    assert case.must_include == [] and not case.comparisons.get().judgments.exists()

    saved = annotator_client.post(
        judge,
        {"ticket": ticket, "pick": "right", "edited": answer, "key_phrases": "30 days\nunworn\n"},
        follow=True,
    )
    assert "with your correct answer and 2 phrases that matter" in saved.content.decode()
    case.refresh_from_db()
    assert case.must_include == ["30 days", "unworn"]
