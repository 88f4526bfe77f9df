"""Fixtures shared by every test: users with roles, a real Celery worker, a real Chromium.

Tests run against this machine's PostgreSQL and Redis (see [tool.pytest.ini_options] env in
pyproject.toml); nothing here stands in for them.
"""

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PATCHWISE_CHROMIUM", "/usr/bin/chromium")


def cached_demo_model() -> Path:
    """The demo model folder, built by training.demo on first use and kept between
    sessions: one build per version of demo.py, under a file lock, so parallel sessions and
    every test package (engine, jobs, rounds, bench) share a single build."""
    from training import demo

    prebuilt = os.environ.get(
        "PATCHWISE_DEMO_MODEL"
    )  # a folder `python -m training.engine demo` wrote
    if prebuilt:
        return Path(prebuilt)
    version = hashlib.sha256(Path(demo.__file__).read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("PATCHWISE_CACHE_DIR") or Path.home() / ".cache" / "patchwise")
    target = root / f"test-demo-model-{version}"
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"test-demo-model-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "scenario" / "eval.jsonl").is_file():
            staging = root / f"test-demo-model-{version}.building-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            demo.build_demo_model(staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    return target


def wait_for(predicate, *, timeout: float = 240, every: float = 0.25, what: str = "condition"):
    """Poll until predicate() is truthy (its value is returned); fail naming what never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (a test's own folder): what a job left
    running."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


@dataclass
class Account:
    user: object
    username: str
    password: str


def _make_account(username: str, role: str) -> Account:
    from accounts.services import user_create

    password = f"{username}-Secret-pw-1"
    user, _ = user_create(username=username, role=role, password=password)
    return Account(user=user, username=username, password=password)


@pytest.fixture
def curator(db) -> Account:
    return _make_account("carla", "curator")


@pytest.fixture
def annotator(db) -> Account:
    return _make_account("anna", "annotator")


@pytest.fixture
def curator_client(curator):
    """A test client logged in as the curator (its own client: tests may use both roles)."""
    from django.test import Client

    client = Client()
    client.force_login(curator.user)
    return client


@pytest.fixture
def annotator_client(annotator):
    from django.test import Client

    client = Client()
    client.force_login(annotator.user)
    return client


def _test_database_url() -> str:
    """The URL of the database this test session really uses (pytest-django's test_ copy)."""
    from django.db import connection

    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    auth = f"{user}:{s['PASSWORD']}@" if s.get("PASSWORD") else f"{user}@"
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class WorkerProcess:
    """A real `celery worker` in a child process, talking to the test database over Redis."""

    def __init__(
        self, queues: str, extra_env: dict[str, str], log_path: Path, pool: str = "solo"
    ) -> None:
        self.log_path = log_path
        env = {**os.environ, "DATABASE_URL": _test_database_url(), **extra_env}
        env.pop("TEST_DATABASE_NAME", None)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "-Q", queues, "--pool", pool, "--concurrency", "1",
                "--hostname", f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
                "--without-gossip", "--without-mingle", "--loglevel", "INFO",
            ],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{self.log()}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"celery worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a lost machine would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def start_worker(transactional_db, tmp_path):
    """Factory: start_worker(queues="gpu,default", env={...}, pool="solo") -> WorkerProcess;
    stopped after. Pool "prefork" (as production runs) where time limits matter: solo ignores
    them."""
    from config.celery import app

    started: list[WorkerProcess] = []

    def start(
        queues: str = "default,gpu", env: dict[str, str] | None = None, pool: str = "solo"
    ) -> WorkerProcess:
        if not app.conf.broker_url.startswith("redis://"):
            pytest.fail("worker tests need Redis: set CELERY_BROKER_URL=redis://...")
        if not started:
            app.control.purge()  # messages left over from an earlier, interrupted run
        worker = WorkerProcess(queues, env or {}, tmp_path / f"worker-{len(started)}.log", pool)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def login(page, live_server, account: Account) -> None:
    """Log in through the real login form, as a person would."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", account.username)
    page.fill("#id_password", account.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login" not in url)
