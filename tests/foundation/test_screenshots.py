"""docs/screenshots/take.py, the README's screenshot walk, run against a live server: every page
it reaches is saved and answers without an error status, a console error or a script error."""

import subprocess
import sys

import pytest

from tests.conftest import CHROMIUM, ROOT

pytestmark = pytest.mark.browser

PAGES = ("login", "compare", "compare-editor", "compare-phone", "projects", "report", "cases",
         "import", "jobs", "rounds")  # fmt: skip


def test_the_screenshot_walk_saves_every_page_and_finds_no_error(
    live_server, curator, annotator, tmp_path
):
    from annotate.services import case_create, project_create

    project = project_create(name="Demo", slug="demo")
    for n in range(2):
        case_create(project=project, prompt=f"Return window {n}?", response="7 days.",
                    better_response="30 days.")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "docs/screenshots/take.py", "--url", live_server.url,
         "--curator", f"{curator.username}:{curator.password}",
         "--annotator", f"{annotator.username}:{annotator.password}",
         "--out", str(tmp_path), "--chromium", CHROMIUM],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    saved = {path.stem for path in tmp_path.glob("*.png")}
    assert set(PAGES) <= saved, result.stdout
    assert "skipped job: no job yet" in result.stdout  # the walk says what it could not show
    assert all(path.stat().st_size > 5_000 for path in tmp_path.glob("*.png"))
