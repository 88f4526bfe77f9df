"""docker-compose.yml cannot run here (no Docker engine): check its shape and the README, and
run the web healthcheck's own command against a live server."""

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_services_and_volumes():
    compose = _compose()
    assert {"postgres", "redis", "web", "worker"} <= set(compose["services"])
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])


def test_worker_consumes_the_gpu_queue_with_a_gpu_reserved():
    worker = _compose()["services"]["worker"]
    assert "-Q gpu" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert devices[0]["count"] == "all"  # one worker per node, every GPU of it
    assert "PATCHWISE_WORKER_GPUS" in worker["environment"]


def test_readme_shows_the_same_commands_as_compose():
    readme = (ROOT / "README.md").read_text()
    for name, service in _compose()["services"].items():
        if "command" in service:
            assert service["command"] in readme, f"README lacks the {name} command"
    assert "make up" in readme and "make test" in readme


def test_services_use_the_environment_the_settings_read():
    compose = _compose()
    for name in ("web", "worker"):
        env = compose["services"][name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert "ARTIFACT_ROOT" in env


def test_migrations_run_once_before_web_and_the_workers_start():
    services = _compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"].split()[:3] == ["python", "manage.py", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["environment"]["DATABASE_URL"] == services["web"]["environment"]["DATABASE_URL"]
    for name in ("web", "worker", "scheduler"):
        wait = services[name]["depends_on"]["migrate"]["condition"]
        assert wait == "service_completed_successfully", f"{name} may start before migrations"
        assert "migrate" not in services[name]["command"]


def _healthcheck_command() -> list[str]:
    test = _compose()["services"]["web"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "/healthz" in " ".join(test)
    return test[1:]


def test_the_web_healthcheck_probes_healthz():
    web = _compose()["services"]["web"]
    assert web["healthcheck"]["retries"] >= 1 and "start_period" in web["healthcheck"]
    assert "http://127.0.0.1:8000/healthz" in " ".join(_healthcheck_command())


@pytest.mark.django_db
def test_the_healthcheck_command_passes_on_a_healthy_server_and_fails_on_a_refusal(live_server):
    """The probe is run as Docker would run it, against this test's live server."""
    host_port = live_server.url.removeprefix("http://")
    command = [sys.executable] + [
        part.replace("127.0.0.1:8000", host_port) for part in _healthcheck_command()[1:]
    ]
    allowed = {"PATH": "/usr/bin:/bin", "ALLOWED_HOSTS": "localhost,127.0.0.1"}
    assert subprocess.run(command, env=allowed, timeout=30).returncode == 0
    refused = {**allowed, "ALLOWED_HOSTS": "patchwise.example.com"}  # a Host Django refuses: 400
    assert subprocess.run(command, env=refused, timeout=30, capture_output=True).returncode != 0


def test_readme_documents_the_first_curator_and_the_model_folder():
    readme = (ROOT / "README.md").read_text()
    compose = _compose()
    first = re.search(r"docker compose run --rm web (python manage.py create_user .+?)\s+#", readme)
    assert first and "--role curator" in first.group(1)
    assert shlex.split(first.group(1))[2] == "create_user"
    default_model = re.search(
        r"PATCHWISE_BASE_MODEL:\s*\$\{PATCHWISE_BASE_MODEL:-(\S+)\}",
        (ROOT / "docker-compose.yml").read_text(),
    ).group(1)
    assert f"python -m training.engine demo --out {default_model}" in readme
    assert "artifacts:/artifacts" in compose["services"]["web"]["volumes"]  # where it builds
