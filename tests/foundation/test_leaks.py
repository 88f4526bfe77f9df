"""Smaller leaks (issue 13, item 13): weak passwords, a missing SECRET_KEY, what /healthz tells
strangers, and which server folders a launch may name."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import override_settings

from accounts.services import user_create
from annotate.services import case_create, project_create
from tests.conftest import ROOT
from tests.training.conftest import judge_all
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


def test_create_user_applies_the_password_validators():
    for weak in ("password", "12345678", "short"):
        with pytest.raises(ValidationError) as refused:
            user_create(username="dora", role="curator", password=weak)
        assert "password" in refused.value.message_dict
    with pytest.raises(CommandError, match="too common"):
        call_command("create_user", "dora", "--role", "curator", "--password", "password")
    with pytest.raises(CommandError, match="too similar to the username"):
        call_command("create_user", "doralinda", "--role", "curator", "--password", "doralinda1")
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username__startswith="dora").exists()
    user, _ = user_create(username="dora", role="curator", password="Long-and-unusual-77")
    assert user.check_password("Long-and-unusual-77")


def _start_settings(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = "import django; django.setup(); print('started')"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_debug_off_without_a_secret_key_refuses_to_start_naming_it():
    env = {key: value for key, value in os.environ.items() if key != "SECRET_KEY"}
    refused = _start_settings({**env, "DEBUG": "0"})
    assert refused.returncode != 0
    assert "SECRET_KEY is not set" in refused.stderr and "started" not in refused.stdout
    assert _start_settings({**env, "DEBUG": "0", "SECRET_KEY": "   "}).returncode != 0
    assert _start_settings({**env, "DEBUG": "1"}).stdout.strip() == "started"


BROKER_DOWN = "redis://127.0.0.1:1/0"


def test_anonymous_healthz_says_only_the_status_words(client):
    with override_settings(CELERY_BROKER_URL=BROKER_DOWN):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "broker": "down"}
    assert b"127.0.0.1" not in response.content and b"Error" not in response.content


def test_staff_and_the_health_token_see_why_a_part_is_down(client, curator, settings):
    settings.PATCHWISE_HEALTHZ_TOKEN = "probe-token-0123456789"
    with override_settings(CELERY_BROKER_URL=BROKER_DOWN):
        wrong = client.get("/healthz", headers={"Authorization": "Bearer guess"})
        probe = client.get("/healthz", headers={"Authorization": "Bearer probe-token-0123456789"})
        curator.user.is_staff = True
        curator.user.save()
        client.force_login(curator.user)
        staff = client.get("/healthz")
    assert "errors" not in wrong.json()
    assert "broker" in probe.json()["errors"] and "broker" in staff.json()["errors"]


@pytest.fixture
def model_folder(tmp_path, settings):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    settings.PATCHWISE_BASE_MODEL = str(folder)
    return folder


@pytest.fixture
def shop(db, annotator):
    project = project_create(name="Shop", slug="shop")
    case_create(project=project, prompt="Return Ridge boots?", response="7 days.",
                better_response="30 days.")  # fmt: skip
    judge_all(project, annotator.user)
    return project


def _launch(client, config):
    return client.post(
        "/api/v1/projects/shop/jobs", {"config": config}, content_type="application/json"
    )


def test_a_path_outside_the_model_roots_gets_one_message_whether_it_exists_or_not(
    curator_client, shop, model_folder, tmp_path
):
    existing, missing = tmp_path / "elsewhere", tmp_path / "no-such-folder"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    answers = [_launch(curator_client, {"model": str(path)}) for path in (existing, missing)]
    assert [answer.status_code for answer in answers] == [400, 400]
    details = [answer.json()["detail"] for answer in answers]
    assert details[0].replace(str(existing), "PATH") == details[1].replace(str(missing), "PATH")
    assert "PATCHWISE_MODEL_ROOTS" in details[0]
    for probe in ("/etc", "/etc/passwd", "/root", "/nonexistent"):
        answer = _launch(curator_client, {"adapter": probe})
        assert answer.status_code == 400 and "not under the folders" in answer.json()["detail"]
    # a link inside a root that leads out of it is outside too
    (model_folder / "escape").symlink_to(existing)
    linked = _launch(curator_client, {"model": str(model_folder / "escape")})
    assert linked.status_code == 400 and "not under the folders" in linked.json()["detail"]
    assert TrainingJob.objects.count() == 0


def test_model_roots_come_from_the_environment_variable(curator_client, shop, tmp_path, settings):
    settings.PATCHWISE_MODEL_ROOTS = [tmp_path / "models"]
    model = tmp_path / "models" / "llama"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert _launch(curator_client, {"model": str(model)}).status_code == 202
    base = _launch(curator_client, {})  # the base model is not under the configured root
    assert base.status_code == 400 and "PATCHWISE_MODEL_ROOTS" in base.json()["detail"]
