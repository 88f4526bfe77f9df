"""Restricted means restricted for curators too (issue 13, item 8): a curator who is no member
of a restricted project saw it, opened its report, exported its pairs and could launch a job in
another project on its artifacts. Now members (annotators and curators) and staff only."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.services import user_create
from annotate.services import case_create, project_create
from rounds import services as rounds_services
from tests.annotate.conftest import make_pairs
from training import services as training_services
from training.artifacts import job_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_folder(tmp_path, settings):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    settings.PATCHWISE_BASE_MODEL = str(folder)
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return folder


@pytest.fixture
def staff(db):
    user, _ = user_create(username="sam", role="curator", password="Sam-staff-pw-77")
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def secret(staff, model_folder):
    """A restricted project with a pair, a queued job and a queued generation."""
    from annotate.services import judgment_submit

    project = project_create(name="Secret", slug="secret", restricted=True, actor=staff)
    case = case_create(project=project, prompt="Launch date?", response="May.",
                       better_response="June.")  # fmt: skip
    judgment_submit(comparison=case.comparisons.get(), annotator=staff, choice="a")
    make_pairs(project, 1)
    job = training_services.job_enqueue(project=project, actor=staff, config={"epochs": 1})
    generation = rounds_services.generation_create(
        project=project, actor=staff, cases=[case], selection={"kind": "ids"}
    )
    return project, job, generation


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_curator_who_is_no_member_sees_nothing_of_a_restricted_project(curator, secret):
    project, job, generation = secret
    client = _client(curator.user)
    assert "Secret" not in client.get("/").content.decode()
    comparison = project.comparisons.first()
    refused = {
        "get": [
            reverse("compare", args=["secret"]),
            reverse("project_report", args=["secret"]),
            reverse("case_list", args=["secret"]),
            reverse("case_upload", args=["secret"]),
            reverse("project_settings", args=["secret"]),
            reverse("project_team", args=["secret"]),
            reverse("training:project_jobs", args=["secret"]),
            reverse("rounds:project_rounds", args=["secret"]),
            reverse("rounds:generation_launch", args=["secret"]),
            reverse("rounds:generation_detail", args=[generation.pk]),
            "/api/v1/projects/secret/pairs.jsonl",
            "/api/v1/projects/secret/comparisons/next",
            f"/api/v1/generations/{generation.pk}",
        ],
        "post": [
            reverse("judge", args=["secret"]),
            reverse("undo", args=["secret"]),
            reverse("training:project_jobs", args=["secret"]),
            reverse("rounds:round_next", args=["secret"]),
            reverse("rounds:generation_cancel", args=[generation.pk]),
            "/api/v1/projects/secret/cases",
            "/api/v1/projects/secret/jobs",
            "/api/v1/projects/secret/generations",
            f"/api/v1/comparisons/{comparison.pk}/judgment",
            f"/api/v1/generations/{generation.pk}/cancel",
        ],
    }
    bodies = {
        "/api/v1/projects/secret/cases": {"prompt": "q?", "response": "r"},
        f"/api/v1/comparisons/{comparison.pk}/judgment": {"choice": "a"},
    }
    for method, urls in refused.items():
        for url in urls:
            if method == "post" and url.startswith("/api/"):
                response = client.post(url, bodies.get(url, {}), content_type="application/json")
            else:
                response = getattr(client, method)(url)
            assert response.status_code == 403, (method, url, response.status_code)
    # its jobs are not there for them at all
    for url in (
        reverse("training:job_detail", args=[job.pk]),
        reverse("training:job_download", args=[job.pk]),
        f"/api/v1/jobs/{job.pk}",
        f"/api/v1/jobs/{job.pk}/adapter.zip",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 404


def test_members_and_staff_see_it(curator, annotator, staff, secret):
    project, job, generation = secret
    project.members.add(curator.user, annotator.user)
    for user in (curator.user, staff):
        client = _client(user)
        assert "Secret" in client.get("/").content.decode()
        assert client.get(reverse("project_report", args=["secret"])).status_code == 200
        assert client.get(f"/api/v1/jobs/{job.pk}").status_code == 200
        assert client.get("/api/v1/projects/secret/pairs.jsonl").status_code == 200
    assert _client(annotator.user).get(reverse("compare", args=["secret"])).status_code == 200


def test_a_launch_elsewhere_cannot_use_a_restricted_projects_artifacts(
    curator, staff, secret, model_folder
):
    project, job, _generation = secret
    adapter = job_dir(job.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    mine = project_create(name="Mine", slug="mine")
    case_create(project=mine, prompt="Q?", response="bad", better_response="good")
    from annotate.services import judgment_submit

    judgment_submit(comparison=mine.comparisons.get(), annotator=curator.user, choice="a")
    client = _client(curator.user)
    for config in ({"adapter": str(adapter)}, {"model": str(adapter)},
                   {"adapter": str(job_dir(job.pk) / ".." / str(job.pk) / "adapter")}):  # fmt: skip
        refused = client.post(
            "/api/v1/projects/mine/jobs", {"config": config}, content_type="application/json"
        )
        assert refused.status_code == 400
        assert (
            "is in the artifacts of a job that is not of project mine" in refused.json()["detail"]
        )
    generation = client.post(
        "/api/v1/projects/mine/generations",
        {"model": str(adapter)},
        content_type="application/json",
    )
    assert generation.status_code == 400 and "not of project mine" in generation.json()["detail"]


def test_add_member_and_remove_member_commands(curator, secret):
    from io import StringIO

    from django.core.management import CommandError, call_command

    def run(*args) -> str:
        out = StringIO()
        call_command(*args, stdout=out)
        return out.getvalue().strip()

    client = _client(curator.user)
    assert client.get(reverse("project_report", args=["secret"])).status_code == 403
    assert run("add_member", "secret", curator.username) == "added carla to project secret"
    assert (
        run("add_member", "secret", curator.username)
        == "carla is already a member of project secret"
    )
    assert client.get(reverse("project_report", args=["secret"])).status_code == 200
    assert run("remove_member", "secret", "carla") == "removed carla from project secret"
    assert client.get(reverse("project_report", args=["secret"])).status_code == 403
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        run("add_member", "secret", "nobody")
    with pytest.raises(CommandError, match="no project 'nope'"):
        run("remove_member", "nope", "carla")


def test_the_team_page_adds_removes_and_creates_members(curator, annotator, staff, secret):
    project, _job, _generation = secret
    project.members.add(curator.user)
    client = _client(curator.user)
    url = reverse("project_team", args=["secret"])
    assert "carla" in client.get(url).content.decode()
    # an annotator manages no team
    assert _client(annotator.user).get(url).status_code == 403

    added = client.post(url, {"action": "add", "add-username": "anna"})
    assert added.status_code == 302 and project.members.filter(username="anna").exists()
    assert _client(annotator.user).get(reverse("compare", args=["secret"])).status_code == 200
    missing = client.post(url, {"action": "add", "add-username": "ghost"})
    assert missing.status_code == 400 and "No active account is named" in missing.content.decode()

    removed = client.post(url, {"action": "remove", "username": "anna"})
    assert removed.status_code == 302 and not project.members.filter(username="anna").exists()
    assert _client(annotator.user).get(reverse("compare", args=["secret"])).status_code == 403

    created = client.post(
        url, {"action": "create", "new-username": "newbie", "new-role": "annotator"}
    )
    assert created.status_code == 200 and created["Cache-Control"] == "no-store"
    html = created.content.decode()
    password = html.split('<code id="new-password">')[1].split("</code>")[0]
    assert len(password) >= 12 and project.members.filter(username="newbie").exists()
    taken = client.post(url, {"action": "create", "new-username": "newbie", "new-role": "curator"})
    assert taken.status_code == 400 and "exists" in taken.content.decode()

    # The one-time password lets the newcomer in only to choose their own.
    newcomer = Client()
    login = newcomer.post("/accounts/login/", {"username": "newbie", "password": password})
    assert login.status_code == 302
    assert newcomer.get(reverse("compare", args=["secret"]))["Location"] == "/accounts/password/"
    assert newcomer.get("/api/v1/projects/secret/comparisons/next").status_code == 403
    changed = newcomer.post(
        "/accounts/password/",
        {"old_password": password, "new_password1": "My-own-pass-4321",
         "new_password2": "My-own-pass-4321"},
    )  # fmt: skip
    assert changed.status_code == 302
    assert newcomer.get(reverse("compare", args=["secret"])).status_code == 200
    again = Client()
    assert (
        again.post("/accounts/login/", {"username": "newbie", "password": password}).status_code
        == 200
    )
