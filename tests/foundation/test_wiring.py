"""The foundation works with the real parts: PostgreSQL, Redis, a Celery worker, Chromium."""

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings
from django.urls import reverse

from tests.conftest import ROOT, login

pytestmark = pytest.mark.django_db


def test_migrations_apply_on_postgresql_and_match_the_models():
    assert connection.vendor == "postgresql"
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_pages_need_a_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert client.get(reverse("login")).status_code == 200


def test_api_without_token_answers_401_in_json(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["detail"].startswith("Send 'Authorization: Bearer TOKEN'")


def test_create_token_prints_a_token_that_authenticates(client, annotator):
    out = StringIO()
    call_command("create_token", annotator.username, stdout=out)
    token = out.getvalue().strip()
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"username": "anna", "role": "annotator"}
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    from accounts.models import ApiToken

    assert not ApiToken.objects.filter(token_hash=token).exists()  # stored hashed


def test_revoke_token_refuses_the_token_at_once(client, annotator):
    token = call_command_output("create_token", annotator.username)
    me = {"path": "/api/v1/me", "headers": {"Authorization": f"Bearer {token}"}}
    assert client.get(**me).status_code == 200  # and its check is remembered for a second
    out = call_command_output("revoke_token", token[:8])
    assert out == f"revoked {token[:8]}… of {annotator.username}"
    assert client.get(**me).status_code == 401
    with pytest.raises(CommandError, match="no unrevoked token matches"):
        call_command("revoke_token", token)


def test_a_token_revoked_by_another_process_is_refused_within_the_check_time(
    client, annotator, settings
):
    """Each web worker remembers a token check for PATCHWISE_TOKEN_CHECK_SECONDS."""
    import time

    from accounts.models import ApiToken

    settings.PATCHWISE_TOKEN_CHECK_SECONDS = 0.5
    token = call_command_output("create_token", annotator.username)
    me = {"path": "/api/v1/me", "headers": {"Authorization": f"Bearer {token}"}}
    assert client.get(**me).status_code == 200
    revoked_at = time.monotonic()
    # As another process would: a plain UPDATE, no signal reaches this one.
    ApiToken.objects.filter(prefix=token[:8]).update(revoked_at="2026-01-01T00:00:00Z")
    assert client.get(**me).status_code == 200 or time.monotonic() - revoked_at > 0.5
    time.sleep(0.6)
    assert client.get(**me).status_code == 401


def test_create_user_prints_a_generated_password(client):
    out = StringIO()
    call_command("create_user", "bob", "--role", "curator", stdout=out)
    password = out.getvalue().split("password: ")[1].strip()
    assert client.login(username="bob", password=password)


def test_annotator_gets_403_on_a_curator_page(annotator_client, curator_client):
    url = reverse("project_create")
    assert annotator_client.get(url).status_code == 403
    assert annotator_client.post(url, {"name": "X", "slug": "x"}).status_code == 403


def test_curator_reaches_the_curator_page(curator_client):
    assert curator_client.get(reverse("project_create")).status_code == 200


def test_pages_carry_a_strict_content_security_policy(curator_client):
    response = curator_client.get("/")
    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "http" not in policy  # no third-party origin
    html = response.content.decode()
    assert 'src="http' not in html and "src='http" not in html  # htmx is served by us
    assert "htmx" in html
    assert "X-CSRFToken" in html  # htmx requests carry the CSRF token as a header


def test_json_answers_carry_no_content_security_policy_but_the_api_docs_do(client, annotator):
    """A CSP governs documents; JSON is never rendered as one, and building it costs CPU."""
    token = call_command_output("create_token", annotator.username)
    answer = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert answer["Content-Type"] == "application/json; charset=utf-8"
    assert "Content-Security-Policy" not in answer
    assert answer["X-Content-Type-Options"] == "nosniff"  # so it is never taken for HTML
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and "Content-Security-Policy" in docs


@pytest.mark.django_db(transaction=True)
def test_the_health_check_costs_no_round_trip_and_still_sees_a_dropped_connection():
    """Django checks a persistent connection before each request; ours (config/postgresql)
    asks the server only when its socket says something happened."""
    import time

    import psycopg

    def last_statement_of(pid: int) -> str:
        with psycopg.connect(**admin_params, autocommit=True) as admin:
            row = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
            return (row.fetchone() or [""])[0]

    db = connection.settings_dict
    admin_params = {"dbname": db["NAME"], "user": db["USER"], "host": db["HOST"]}
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'marker'")
    pid = connection.connection.info.backend_pid
    assert connection.is_usable()
    assert last_statement_of(pid) == "SELECT 'marker'"  # no SELECT 1 was sent

    with psycopg.connect(**admin_params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(50):  # the server ends a backend asynchronously
            if admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                time.sleep(0.1)
    assert not connection.is_usable()
    connection.close_if_unusable_or_obsolete()  # at each request's start: check again
    with connection.cursor() as cursor:  # the check runs here and reconnects
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid


def call_command_output(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok" and response.json()["broker"] == "ok"


def test_healthz_names_the_broker_when_it_does_not_answer(client):
    with override_settings(CELERY_BROKER_URL="redis://127.0.0.1:1/0"):
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["broker"] == "down" and body["database"] == "ok"


def test_check_deploy_is_clean_with_debug_off_and_a_real_secret():
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "k3x!9s-a-real-looking-secret-key-with-enough-entropy-0123456789abc",
        "ALLOWED_HOSTS": "patchwise.example.com",
    }
    for name in ("SECURE_SSL_REDIRECT", "SECURE_COOKIES", "DJANGO_ALLOW_ASYNC_UNSAFE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_celery_routes_gpu_work_to_the_gpu_queue():
    from config.celery import app

    router = app.amqp.router
    for task in ("training.run_job", "training.run_generation", "training.probe_worker"):
        assert router.route({}, task)["queue"].name == "gpu"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.mark.worker
def test_a_real_worker_runs_a_task_from_the_gpu_queue(start_worker):
    from training.tasks import probe_worker

    worker = start_worker(queues="gpu")
    result = probe_worker.delay()
    info = result.get(timeout=60)
    assert info["device"] in ("cpu",) or info["cuda"]
    assert "probe_worker" in worker.log()


def test_the_favicon_is_answered_at_the_root_for_anyone(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


@pytest.mark.browser
def test_browser_logs_in_and_sees_the_home_page(live_server, page, curator):
    failed = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(live_server.url + "/")
    assert "/accounts/login" in page.url
    icon = page.locator("link[rel=icon]").get_attribute("href")
    fetched = "url => fetch(url).then(r => [r.status, r.headers.get('content-type')])"
    assert page.evaluate(fetched, icon) == [200, "image/svg+xml"]
    assert page.evaluate(fetched, "/favicon.ico") == [200, "image/svg+xml"]
    assert not failed, failed
    login(page, live_server, curator)
    assert page.locator("header").inner_text().find("carla") >= 0
    assert page.locator("h1").first.inner_text() == "Projects"


def test_an_unknown_api_path_is_a_json_404(client):
    response = client.get("/api/v1/projects/a/b/c/pairs.jsonl")
    assert response.status_code == 404
    assert response.json() == {"detail": "No API endpoint at /api/v1/projects/a/b/c/pairs.jsonl."}


def test_the_embedded_broker_keeps_all_its_folders_under_var(tmp_path):
    """`make up` without CELERY_BROKER_URL used to leave a control/ folder where it ran."""
    env = {**os.environ, "PATCHWISE_VAR_DIR": str(tmp_path / "var")}
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    script = (
        "import django; django.setup()\n"
        "from training.tasks import probe_worker\n"
        "probe_worker.apply_async()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT),
                           "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["var"]
    assert list((tmp_path / "var" / "broker" / "queue").glob("*.msg"))  # the task was sent
