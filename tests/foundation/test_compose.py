"""docker-compose.yml cannot run here (no Docker engine): check its shape and the README."""

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
