"""No 500 for bad input (issue 13, item 12): each of these answered a traceback before; now a
4xx with a JSON detail, or the form again with its error."""

import pytest
from django.urls import reverse

from annotate.models import Project
from annotate.services import case_create, project_create
from rounds.models import GenerationRequest
from tests.training.conftest import judge_all
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_folder(tmp_path, settings):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    settings.PATCHWISE_BASE_MODEL = str(folder)
    return folder


@pytest.fixture
def shop(db, annotator, model_folder):
    project = project_create(name="Shop", slug="shop")
    case_create(project=project, prompt="Return Ridge boots?", response="7 days.",
                better_response="30 days.", tags=["returns"])  # fmt: skip
    judge_all(project, annotator.user)
    return project


def _post_json(client, url, body):
    return client.post(url, body, content_type="application/json")


def _assert_detail(response, status, *words):
    assert response.status_code == status, response.content[:300]
    detail = response.json()["detail"]
    for word in words:
        assert word in str(detail)


def test_job_paths_too_long_or_not_text_are_refused_with_a_detail(curator_client, shop):
    url = "/api/v1/projects/shop/jobs"
    long_name = "x" * 300
    cases = [
        ({"model": f"/models/{long_name}"}, "longer than 255"),
        ({"adapter": f"/adapters/{long_name}/a"}, "longer than 255"),
        ({"model": "/m/" + "a/" * 600}, "at most 1000"),
        ({"adapter": 7}, "'adapter' must be a folder path"),
        ({"model": ["/models/a"]}, "'model' must be a folder path"),
        ({"model": "/models/a\x00b"}, "NUL"),
    ]
    for config, words in cases:
        _assert_detail(_post_json(curator_client, url, {"config": config}), 400, words)
    form = curator_client.post(
        reverse("training:project_jobs", args=["shop"]),
        {"model": f"/models/{long_name}", "epochs": 3, "beta": 0.1, "loss": "sigmoid",
         "sft_weight": 1, "lr": 0.001, "lora_r": 16},
    )  # fmt: skip
    assert form.status_code == 400 and "longer than 255" in form.content.decode()
    assert TrainingJob.objects.count() == 0


def test_generation_seeds_follow_the_training_rule(curator_client, shop):
    url = "/api/v1/projects/shop/generations"
    for seed in (2**40, -1, 2**32):
        _assert_detail(_post_json(curator_client, url, {"seed": seed}), 400, "'seed'", "4294967295")
    assert _post_json(curator_client, url, {"seed": 2**32 - 1}).status_code == 202
    assert GenerationRequest.objects.get().seed == 2**32 - 1
    form = curator_client.post(
        reverse("rounds:generation_launch", args=["shop"]),
        {"scope": "flagged", "n": 2, "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 8,
         "seed": 2**40},
    )  # fmt: skip
    assert form.status_code == 400 and "4294967295" in form.content.decode()


def test_a_nul_in_a_generation_filter_tag_is_refused(curator_client, shop):
    url = "/api/v1/projects/shop/generations"
    _assert_detail(_post_json(curator_client, url, {"filter": {"tag": "ret\x00urns"}}), 400, "NUL")
    form = curator_client.post(
        reverse("rounds:generation_launch", args=["shop"]),
        {"scope": "filter", "tag": "ret\x00urns", "n": 2, "temperature": 0.8, "top_p": 0.9,
         "max_new_tokens": 8, "seed": 0},
    )  # fmt: skip
    assert form.status_code == 400
    assert GenerationRequest.objects.count() == 0


def test_next_round_form_with_a_job_that_is_no_number(curator_client, shop):
    url = reverse("rounds:round_next", args=["shop"])
    for job in ("²", "1" * 5000, "-1", "1e3"):
        response = curator_client.post(url, {"job": job}, follow=True)
        assert response.status_code == 200
        assert "Pick a succeeded job that has no round yet." in response.content.decode()


def test_an_api_body_over_the_limit_is_a_413_in_json(curator_client, shop, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = {"prompt": "x" * 4096, "response": "y"}
    response = _post_json(curator_client, "/api/v1/projects/shop/cases", body)
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    assert "1024 bytes" in response.json()["detail"]


def test_invalid_project_forms_answer_400(curator_client, shop):
    created = curator_client.post(reverse("project_create"), {"name": "", "slug": "no spaces!"})
    assert created.status_code == 400 and b"errorlist" in created.content
    changed = curator_client.post(
        reverse("project_settings", args=["shop"]), {"name": "Shop", "overlap": 0}
    )
    assert changed.status_code == 400 and b"errorlist" in changed.content
    assert Project.objects.get(slug="shop").overlap == 1


def test_the_judge_view_never_echoes_markup_in_an_html_400(annotator_client, shop):
    markup = "<img src=x onerror=alert(1)>"
    response = annotator_client.post(
        reverse("judge", args=["shop"]), {"ticket": "t", "pick": markup, "edited": ""}
    )
    assert response.status_code == 400
    # the reason quotes the value posted: as plain text, which no browser runs as markup
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "not one of the available choices" in response.content.decode()
