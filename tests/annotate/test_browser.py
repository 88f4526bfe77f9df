"""The compare page in a real Chromium: keyboard judging, editing, undo, XSS, phone and laptop.

Set PATCHWISE_SCREENSHOT_DIR to keep the screenshots these tests take.
"""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from annotate import services
from annotate.models import Judgment, Lease
from tests.conftest import login

pytestmark = pytest.mark.browser
XSS = "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>"


@pytest.fixture
def project(transactional_db):
    project = services.project_create(
        name="Support bot", slug="support", guidelines="Prefer the **correct** answer."
    )
    for n in range(4):
        services.case_create(
            project=project,
            prompt=[
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": f"How do I reset my password? ({n})"},
            ],
            response=f"Deployed answer {n}: contact support.",
            better_response=f"Better answer {n}:\n\n```bash\npw reset --user me\n```",
        )
    return project


def _watch(page) -> dict[str, list]:
    """Collect dialogs (dismissed), script errors and CSP violations, and failed requests."""
    seen: dict[str, list] = {"dialogs": [], "errors": []}

    def on_dialog(dialog) -> None:
        seen["dialogs"].append(dialog.message)
        dialog.dismiss()

    def on_console(message) -> None:
        # A failed request is reported below with its URL.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            seen["errors"].append(message.text)

    def on_response(response) -> None:
        if response.status >= 400:
            seen["errors"].append(f"{response.status} {response.url}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("response", on_response)
    return seen


def _current(annotator) -> Lease:
    return Lease.objects.select_related("comparison__response_a", "comparison__response_b").get(
        annotator=annotator.user
    )


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("PATCHWISE_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_annotator_judges_edits_and_undoes_with_the_keyboard(live_server, page, annotator, project):
    seen = _watch(page)
    login(page, live_server, annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/")
    notice = page.locator("#pair .notice")
    # A marker on the window survives htmx swaps and would vanish with a full page load.
    page.evaluate("window.__samePage = true")

    first = _current(annotator)
    page.keyboard.press("1")
    expect(notice).to_have_text("Saved: A better.")

    second = _current(annotator)
    assert second.comparison_id != first.comparison_id
    page.keyboard.press("e")
    editor = page.locator("#edited")
    expect(editor).to_be_focused()
    # No side is preset: writing a correction is not a vote for A.
    expect(editor).to_have_value("")
    expect(page.locator("#editor-verdict input:checked")).to_have_count(0)
    # Digits and letters typed into the answer are text, not shortcuts.
    page.keyboard.type("Run: pw reset 1 2 3 e z")
    page.keyboard.press("Control+Enter")  # refused by the browser: which side was better?
    page.wait_for_timeout(500)
    expect(notice).to_have_text("Saved: A better.")
    assert not Judgment.objects.filter(comparison_id=second.comparison_id).exists()
    page.locator("#editor-verdict input[value=right]").check()
    editor.focus()
    page.keyboard.press("Control+Enter")
    expect(notice).to_have_text("Saved: B better with your correct answer.")

    third = _current(annotator)
    page.keyboard.press("e")
    expect(page.locator("#edited")).to_be_focused()
    page.keyboard.press("Escape")  # leaves the editor; keys are shortcuts again
    expect(page.locator("#editor")).not_to_have_attribute("open", "")
    page.keyboard.press("2")
    expect(notice).to_have_text("Saved: B better.")
    page.keyboard.press("z")
    expect(notice).to_have_text("Undone: B better. Judge this pair again.")
    assert _current(annotator).comparison_id == third.comparison_id
    page.keyboard.press("3")
    expect(notice).to_have_text("Saved: tie.")

    page.keyboard.press("?")
    expect(page.locator("#keys-help")).to_have_attribute("open", "")
    expect(page.locator("#keys-help")).to_contain_text("both are bad")
    assert page.evaluate("window.__samePage") is True

    judgments = {j.comparison_id: j for j in Judgment.objects.filter(annotator=annotator.user)}
    assert set(judgments) == {first.comparison_id, second.comparison_id, third.comparison_id}
    assert judgments[first.comparison_id].choice == first.shown_left
    assert judgments[second.comparison_id].choice != second.shown_left  # B, the right side
    assert judgments[second.comparison_id].edited == "Run: pw reset 1 2 3 e z"
    assert judgments[second.comparison_id].corrected_response.origin == "human"
    assert judgments[third.comparison_id].choice == "tie"
    for lease in (first, second, third):
        judgment = judgments[lease.comparison_id]
        assert judgment.shown_left == lease.shown_left
        assert judgment.duration_ms is not None
    assert seen == {"dialogs": [], "errors": []}


def test_mouse_users_have_buttons_with_the_key_hints(live_server, page, annotator, project):
    login(page, live_server, annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/")
    # No choice looks already made: the four buttons look alike until one is pressed.
    looks = page.eval_on_selector_all(
        ".actions .choices button",
        "bs => bs.map(b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).color])",
    )
    assert len(looks) == 4 and len({tuple(look) for look in looks}) == 1, looks
    shown = _current(annotator)
    page.get_by_role("button", name="4 Both bad").click()
    expect(page.locator("#pair .notice")).to_have_text("Saved: both bad.")
    assert Judgment.objects.get(annotator=annotator.user).comparison_id == shown.comparison_id
    page.get_by_text("Guidelines").click()
    expect(page.locator("#guidelines strong")).to_have_text("correct")

    second = _current(annotator)
    page.get_by_text("Write the correct answer").click()
    editor = page.locator("#edited")
    expect(editor).to_be_focused()
    page.get_by_role("button", name="Start from B").click()
    right = (
        second.comparison.response_b if second.shown_left == "a" else second.comparison.response_a
    )
    expect(editor).to_have_value(right.text)
    # Building on B's text picks no side: this annotator says both were bad.
    expect(page.locator("#editor-verdict input:checked")).to_have_count(0)
    editor.fill(right.text + "\n\nAnd then log in again.")
    page.get_by_label("Neither: both bad").check()
    page.get_by_role("button", name="Save correct answer").click()
    expect(page.locator("#pair .notice")).to_have_text("Saved: both bad with your correct answer.")
    judgment = Judgment.objects.get(annotator=annotator.user, comparison=second.comparison)
    assert judgment.choice == "both_bad"
    assert judgment.edited.endswith("And then log in again.")


def test_a_script_in_a_response_shows_as_text_and_never_runs(
    live_server, page, annotator, transactional_db
):
    project = services.project_create(name="XSS", slug="xss")
    services.case_create(project=project, prompt="Say hi", response=XSS, better_response="Hi!")
    seen = _watch(page)
    login(page, live_server, annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/")
    page.wait_for_load_state("load")
    answers = page.locator(".answer .markdown").all_inner_texts()
    assert any("<script>alert(1)</script>" in text for text in answers)
    assert any("<img src=x onerror=alert(1)>" in text for text in answers)
    assert page.locator(".answer img, .answer script").count() == 0
    assert seen == {"dialogs": [], "errors": []}


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_the_page_fits_a_laptop_and_a_phone(
    live_server, browser, annotator, project, width, height
):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    try:
        login(page, live_server, annotator)
        page.goto(f"{live_server.url}/p/{project.slug}/")
        a, b = (
            page.locator(f'.answer[data-side="{side}"]').bounding_box()
            for side in ("left", "right")
        )
        if width >= 1000:
            assert a["y"] == b["y"] and a["x"] + a["width"] <= b["x"]  # side by side
        else:
            assert b["y"] >= a["y"] + a["height"]  # stacked
        # Nothing sticks out sideways, and the choices are on screen without scrolling sideways.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        choices = page.get_by_role("button", name="2 B better")
        expect(choices).to_be_in_viewport()
        _screenshot(page, f"compare-{width}x{height}.png")
    finally:
        context.close()
