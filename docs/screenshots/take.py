"""Screenshots of every page for the README: a real Chromium walks a running Patchwise.

    python docs/screenshots/take.py --url http://127.0.0.1:8000 \\
        --curator curator:PASSWORD --annotator annotator:PASSWORD --prepare

`make up` (or `python manage.py seed_demo`) prints the demo users' passwords. The walk logs in
through the login form as a person would and saves one PNG per page next to this file (or in
--out): login, projects, compare (and its editor, and on a phone), report, cases, a case,
import, team, jobs, job, rounds, round.

The demo starts with pairs nobody has judged, no job and no round. With --prepare the walk
makes them first, through the pages: the annotator judges the open pairs (the side whose text
matches --prefer, else both bad), the curator clicks Patch and, once the job succeeded, Next
round. That needs the worker `make up` starts, and a few minutes on a CPU. Without --prepare,
pages that do not exist yet (no job, no round, no Team tab) are skipped with a note.

Every page is also checked: a response of 400 or more, a console error or an uncaught script
error is printed with the page's name, and the exit status is then 1.

The pages show the model's folder: serve with a relative PATCHWISE_BASE_MODEL (var/demo-model,
from the repository's root) so the pictures name no folder of your machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FINISHED = ("Succeeded", "Failed", "Cancelled")


@dataclass
class Walk:
    url: str
    out: Path
    project: str
    browser: Browser
    problems: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    where: str = "start"

    def context(self, viewport: dict[str, int] = LAPTOP) -> tuple[BrowserContext, Page]:
        context = self.browser.new_context(viewport=viewport)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("console", lambda message: self._console(message))
        page.on("pageerror", lambda error: self.problems.append(f"{self.where}: {error}"))
        page.on("response", lambda response: self._response(response))
        return context, page

    def _console(self, message) -> None:
        # A failed request is reported with its URL by _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"{self.where}: console: {message.text}")

    def _response(self, response) -> None:
        if response.status >= 400:
            self.problems.append(f"{self.where}: {response.status} {response.url}")

    def visit(self, page: Page, path: str, name: str) -> None:
        self.where = name
        page.goto(self.url + path)
        page.wait_for_load_state("networkidle")

    def shoot(self, page: Page, name: str) -> None:
        self.where = name
        path = self.out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.saved.append(name)
        print(f"saved {path}")

    def skip(self, name: str, why: str) -> None:
        print(f"skipped {name}: {why}")


def login(walk: Walk, page: Page, account: str) -> None:
    username, _, password = account.partition(":")
    walk.visit(page, "/accounts/login/", "login")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    if "/accounts/login" in page.url:
        sys.exit(f"cannot log in as {username}: check the password (seed_demo prints it)")


def judge_open_pairs(walk: Walk, page: Page, prefer: re.Pattern, limit: int) -> int:
    """Judge with the keys, as an annotator would: the side matching ``prefer``, else both
    bad."""
    judged = 0
    walk.visit(page, f"/p/{walk.project}/", "judging")
    while judged < limit and page.locator("#pair-texts").count():
        texts = json.loads(page.locator("#pair-texts").text_content())
        ticket = page.locator("#pair input[name=ticket]").first.get_attribute("value")
        left, right = (bool(prefer.search(texts[side])) for side in ("left", "right"))
        page.keyboard.press("1" if left and not right else "2" if right and not left else "4")
        page.wait_for_function(
            "old => { const t = document.querySelector('#pair input[name=ticket]');"
            " return !t || t.value !== old; }",
            arg=ticket,
        )
        judged += 1
    print(f"judged {judged} pair{'s' * (judged != 1)}")
    return judged


def wait_for_job(walk: Walk, page: Page, timeout_s: float) -> str:
    page.wait_for_selector(
        ", ".join(f"#job-status:text('{status}')" for status in FINISHED),
        timeout=timeout_s * 1000,
    )
    return page.inner_text("#job-status")


def patch_and_wait(walk: Walk, page: Page, timeout_s: float) -> None:
    walk.visit(page, f"/jobs/project/{walk.project}/", "patching")
    if page.locator("#jobs .badge.succeeded").count():
        return
    if not page.locator("#patch-button").count():
        print("cannot patch: no Patch button on the jobs page")
        return
    page.click("#patch-button")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    started = time.monotonic()
    status = wait_for_job(walk, page, timeout_s)
    print(f"job {page.url} {status.lower()} after {time.monotonic() - started:.0f} s")


def next_round_and_wait(walk: Walk, page: Page, timeout_s: float) -> None:
    walk.visit(page, f"/rounds/project/{walk.project}/", "next round")
    if page.locator("#rounds-timeline a[href^='/rounds/']").count():
        return
    if not page.locator("#next-round-button").count():
        print("cannot start a round: no succeeded job without a round")
        return
    page.click("#next-round-button")
    page.wait_for_url(re.compile(r"/rounds/\d+/$"))
    page.wait_for_selector("#round-live[data-generating=false]", timeout=timeout_s * 1000)
    print(f"round {page.url} answered")


def annotator_pages(walk: Walk, account: str, args: argparse.Namespace) -> None:
    context, page = walk.context()
    login(walk, page, account)
    walk.visit(page, f"/p/{walk.project}/", "compare")
    walk.shoot(page, "compare")
    if page.locator("#editor").count():
        page.keyboard.press("e")
        page.locator("#edited").fill("The corrected answer, written by the annotator.")
        walk.shoot(page, "compare-editor")
    context.close()

    context, page = walk.context(PHONE)
    login(walk, page, account)
    walk.visit(page, f"/p/{walk.project}/", "compare-phone")
    walk.shoot(page, "compare-phone")
    if args.prepare:
        judge_open_pairs(walk, page, re.compile(args.prefer), args.max_judgments)
    context.close()


def curator_pages(walk: Walk, account: str, args: argparse.Namespace) -> None:
    context, page = walk.context()
    login(walk, page, account)
    if args.prepare:
        patch_and_wait(walk, page, args.job_timeout)
        next_round_and_wait(walk, page, args.job_timeout)

    walk.visit(page, "/", "projects")
    walk.shoot(page, "projects")
    slug = walk.project
    for name, path in (
        ("report", f"/p/{slug}/report/"),
        ("cases", f"/p/{slug}/cases/"),
        ("import", f"/p/{slug}/import/"),
    ):
        walk.visit(page, path, name)
        walk.shoot(page, name)

    # One flagged case, with its checks and their preview against the case's answers.
    walk.visit(page, f"/p/{slug}/cases/?split=train", "cases")
    case_link = page.locator("table a[href*='/cases/']")
    if case_link.count():
        walk.visit(page, case_link.last.get_attribute("href"), "case")
        walk.shoot(page, "case")
    else:
        walk.skip("case", "the project has no flagged case")

    team = page.locator(".subnav a", has_text=re.compile("team", re.I))
    if team.count():
        walk.visit(page, team.first.get_attribute("href"), "team")
        walk.shoot(page, "team")
    else:
        walk.skip("team", "the project's tabs have no Team link on this server")

    walk.visit(page, f"/jobs/project/{slug}/", "jobs")
    walk.shoot(page, "jobs")
    job = page.locator("#jobs tr:has(.badge.succeeded) a")
    if not job.count():
        job = page.locator("#jobs a")
    if job.count():
        walk.visit(page, job.first.get_attribute("href"), "job")
        walk.shoot(page, "job")
    else:
        walk.skip("job", "no job yet (run with --prepare)")

    walk.visit(page, f"/rounds/project/{slug}/", "rounds")
    walk.shoot(page, "rounds")
    round_link = page.locator("#rounds-timeline a[href^='/rounds/']")
    if round_link.count():
        walk.visit(page, round_link.last.get_attribute("href"), "round")
        walk.shoot(page, "round")
    else:
        walk.skip("round", "no round yet (run with --prepare)")
    context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running server")
    parser.add_argument("--curator", required=True, help="USERNAME:PASSWORD of a curator")
    parser.add_argument("--annotator", required=True, help="USERNAME:PASSWORD of an annotator")
    parser.add_argument("--project", default="demo", help="the project's slug (default: demo)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--prepare", action="store_true", help="judge, patch, start a round")
    parser.add_argument("--prefer", default="30 days", help="regex of the better answer")
    parser.add_argument("--max-judgments", type=int, default=50)
    parser.add_argument("--job-timeout", type=float, default=1800, help="seconds per wait")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        walk = Walk(url=args.url.rstrip("/"), out=args.out, project=args.project, browser=browser)
        context, page = walk.context()
        walk.visit(page, "/accounts/login/", "login")
        walk.shoot(page, "login")
        context.close()
        annotator_pages(walk, args.annotator, args)
        curator_pages(walk, args.curator, args)
        browser.close()

    print(f"{len(walk.saved)} screenshots: {', '.join(walk.saved)}")
    for problem in walk.problems:
        print(f"PROBLEM {problem}")
    return 1 if walk.problems else 0


if __name__ == "__main__":
    sys.exit(main())
