"""Job pages and the JSON API without a worker: permissions, refusals, the report, downloads."""

import hashlib
import html
import io
import json
import re
import zipfile

import pytest
from django.urls import reverse

from annotate.services import case_create, project_create
from tests.training.conftest import judge_all
from training import artifacts, services
from training.charts import line_chart
from training.models import TrainingJob


@pytest.fixture
def project(db, annotator):
    project = project_create(name="Shop", slug="shop")
    case_create(project=project, prompt="Return Ridge hiking boots?", response="7 days.",
                better_response="30 days.")  # fmt: skip
    case_create(project=project, prompt="Cedar tent warranty?", response="5 years.",
                split="regression")  # fmt: skip
    judge_all(project, annotator.user)
    return project


REPORT = {
    "summary": {
        "flagged": {"total": 1, "with_expected": 1, "fixed": 0, "changed": 0, "unchanged": 1},
        "regression": {"total": 1, "with_expected": 1, "fixed": 0, "changed": 1, "unchanged": 0},
    },
    "training": {"stopped_because": "ran the full budget of 3 epochs"},
    "eval": [
        {"prompt": "Return Ridge hiking boots?", "kind": "flagged", "expected": "30 days.",
         "before": "7 days.", "after": "7 days.", "fixed": False, "changed": False},
        {"prompt": "Cedar tent warranty?", "kind": "regression", "expected": "5 years.",
         "before": "5 years.", "after": "2 years.", "fixed": False, "changed": True},
    ],
    "pairs": [{"index": 0, "ref_logp_chosen": -9.0, "ref_logp_rejected": -2.0,
               "policy_logp_chosen": -8.0, "policy_logp_rejected": -3.0}],
}  # fmt: skip


@pytest.fixture
def finished_job(project, curator, model_folder, tmp_path, artifact_root):
    """A job that went through the services to 'succeeded', with a real zip written."""
    job = services.job_enqueue(project=project, actor=curator.user, config={"epochs": 3})
    services.job_claim(job_id=job.pk, worker_name="gpu0@test")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "report.json").write_text(json.dumps(REPORT))
    job.refresh_from_db()
    path, sha256 = artifacts.write_adapter_zip(job=job, adapter_dir=adapter, report=REPORT)
    series = [{"step": s, "loss": 1 / s, "rewards/margins": s / 10, "rewards/accuracies": 1.0}
              for s in range(1, 6)]  # fmt: skip
    services.job_succeed(job_id=job.pk, report=REPORT, metrics_series=series,
                         latest_metrics=series[-1], artifact_path=path,
                         artifact_sha256=sha256)  # fmt: skip
    job.refresh_from_db()
    return job


def test_annotator_gets_403_on_launch_cancel_and_download(client, annotator, finished_job):
    client.force_login(annotator.user)
    assert (
        client.post("/api/v1/projects/shop/jobs", {}, content_type="application/json").status_code
        == 403
    )
    assert client.post(f"/api/v1/jobs/{finished_job.pk}/cancel").status_code == 403
    assert client.get(f"/api/v1/jobs/{finished_job.pk}/adapter.zip").status_code == 403
    assert client.get(reverse("training:job_download", args=[finished_job.pk])).status_code == 403
    page = client.post(reverse("training:project_jobs", args=["shop"]), {"epochs": 1})
    assert page.status_code == 403
    # ...nor watch it: the report's "after" answers are what the next round shows them blind,
    # so job pages and the job API are for curators only.
    status = client.get(f"/api/v1/jobs/{finished_job.pk}")
    assert status.status_code == 403 and status.json()["detail"] == "Only curators may do this."
    for page in (
        reverse("training:project_jobs", args=["shop"]),
        reverse("training:job_detail", args=[finished_job.pk]),
    ):
        assert client.get(page).status_code == 403
        assert client.get(page, headers={"HX-Request": "true"}).status_code == 403


def test_api_refuses_bad_launches_with_a_detail(curator_client, project, model_folder, tmp_path):
    def launch(body):
        return curator_client.post(
            "/api/v1/projects/shop/jobs", body, content_type="application/json"
        )

    missing = launch({"config": {"model": str(model_folder / "nope")}})
    assert missing.status_code == 400 and "does not exist" in missing.json()["detail"]
    bad = launch({"config": {"loss": "magic"}})
    assert bad.status_code == 400 and "'loss' must be one of" in bad.json()["detail"]
    project_create(name="Empty", slug="empty")
    empty = curator_client.post("/api/v1/projects/empty/jobs", {}, content_type="application/json")
    assert empty.status_code == 400 and "no preference pairs" in empty.json()["detail"]
    assert (
        curator_client.post(
            "/api/v1/projects/nope/jobs", {}, content_type="application/json"
        ).status_code
        == 404
    )
    misspelt = launch({"confg": {"epochs": 2}})
    assert misspelt.status_code == 422 and "confg" in str(misspelt.json()["detail"])
    assert TrainingJob.objects.count() == 0

    ok = launch({"config": {"epochs": 2}})
    assert ok.status_code == 202
    job = curator_client.get(f"/api/v1/jobs/{ok.json()['id']}").json()
    assert job["status"] == "queued" and job["config"]["epochs"] == 2
    assert job["data"]["pairs"] == 1


def test_launch_form_shows_the_refusal_on_the_page(curator_client, project, tmp_path, settings):
    settings.PATCHWISE_MODEL_ROOTS = [tmp_path]
    response = curator_client.post(
        reverse("training:project_jobs", args=["shop"]),
        {"model": str(tmp_path / "nope"), "epochs": 3, "beta": 0.1, "loss": "sigmoid",
         "sft_weight": 1, "lr": 0.001, "lora_r": 16},
    )  # fmt: skip
    assert response.status_code == 400
    assert "Cannot launch: model folder" in response.content.decode()


def test_a_missing_base_model_folder_is_named_with_what_to_do(
    curator_client, project, tmp_path, settings
):
    """A fresh docker compose: PATCHWISE_BASE_MODEL points at a folder nothing created yet."""
    missing = tmp_path / "artifacts" / "demo-model"
    settings.PATCHWISE_BASE_MODEL = str(missing)
    api = curator_client.post("/api/v1/projects/shop/jobs", {}, content_type="application/json")
    assert api.status_code == 400
    detail = api.json()["detail"]
    assert f"base model folder {missing} (PATCHWISE_BASE_MODEL) does not exist" in detail
    assert f"python -m training.engine demo --out {missing}" in detail
    page = curator_client.post(
        reverse("training:project_jobs", args=["shop"]),
        {"model": str(missing), "epochs": 3, "beta": 0.1, "loss": "sigmoid", "sft_weight": 1,
         "lr": 0.001, "lora_r": 16},
    )  # fmt: skip
    html = page.content.decode()
    assert page.status_code == 400 and "(PATCHWISE_BASE_MODEL) does not exist" in html
    assert TrainingJob.objects.count() == 0


def test_launch_form_queues_a_job_and_opens_its_page(curator_client, project, model_folder):
    page = curator_client.get(reverse("training:project_jobs", args=["shop"]))
    assert str(model_folder) in page.content.decode()  # the default model is filled in
    response = curator_client.post(
        reverse("training:project_jobs", args=["shop"]),
        {"model": str(model_folder), "epochs": 4, "beta": 0.2, "loss": "ipo", "sft_weight": 0.5,
         "lr": 0.002, "lora_r": 8},
    )  # fmt: skip
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"
    assert job.config["loss"] == "ipo"
    assert (job.config["beta"], job.config["lora_r"], job.config["epochs"]) == (0.2, 8, 4)
    detail = curator_client.get(response.url)
    assert b'hx-trigger="every 1s"' in detail.content  # polls while queued
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", detail.content.decode()))
    assert "queued queued" not in words.lower()  # the badge said it, the phase said it again
    assert "Queued waiting for a GPU worker" in words


def test_launch_form_offers_the_gpus_of_the_workers_node(curator_client, project, model_folder,
                                                         settings):  # fmt: skip
    url = reverse("training:project_jobs", args=["shop"])
    assert 'name="gpus"' not in curator_client.get(url).content.decode()  # one-GPU workers

    settings.PATCHWISE_WORKER_GPUS = 4
    assert 'name="gpus"' in curator_client.get(url).content.decode()
    response = curator_client.post(url, {"model": str(model_folder), "epochs": 2, "beta": 0.1,
                                         "loss": "sigmoid", "sft_weight": 1, "lr": 0.001,
                                         "lora_r": 16, "gpus": 4})  # fmt: skip
    assert response.status_code == 302
    assert TrainingJob.objects.get().config["gpus"] == 4
    refused = curator_client.post(url, {"model": str(model_folder), "epochs": 2, "beta": 0.1,
                                        "loss": "sigmoid", "sft_weight": 1, "lr": 0.001,
                                        "lora_r": 16, "gpus": 5})  # fmt: skip
    assert refused.status_code == 400 and TrainingJob.objects.count() == 1
    assert "&#x27;gpus&#x27; is 5 but a gpu worker has 4" in refused.content.decode()


def test_launch_form_shards_the_model_across_several_gpus(curator_client, project, model_folder,
                                                          settings):  # fmt: skip
    url = reverse("training:project_jobs", args=["shop"])
    assert 'name="shard_base"' not in curator_client.get(url).content.decode()  # one GPU

    settings.PATCHWISE_WORKER_GPUS = 2
    assert 'name="shard_base"' in curator_client.get(url).content.decode()
    fields = {"model": str(model_folder), "epochs": 2, "beta": 0.1, "loss": "sigmoid",
              "sft_weight": 1, "lr": 0.001, "lora_r": 16}  # fmt: skip
    response = curator_client.post(url, {**fields, "gpus": 2, "shard_base": "on"})
    assert response.status_code == 302
    assert TrainingJob.objects.get().config["shard_base"] is True
    refused = curator_client.post(url, {**fields, "gpus": 1, "shard_base": "on"})
    assert refused.status_code == 400 and TrainingJob.objects.count() == 1
    assert "splits the base across several GPUs" in refused.content.decode()


def test_finished_job_page_says_plainly_when_the_patch_is_bad(curator_client, finished_job):
    page = curator_client.get(reverse("training:job_detail", args=[finished_job.pk]))
    html = page.content.decode()
    assert "fixes none of the 1 flagged prompts" in html
    assert "changed 1 of 1 regression prompts" in html
    assert "ran the full budget of 3 epochs" in html
    assert "hx-trigger" not in html  # finished: no more polling
    assert html.count("<svg") == 3 and "<polyline" in html
    assert 'style="' not in html  # CSP forbids inline styles
    assert "download-link" in html

    fragment = curator_client.get(
        reverse("training:job_detail", args=[finished_job.pk]), headers={"HX-Request": "true"}
    )
    assert b"<html" not in fragment.content and b'id="job-live"' in fragment.content
    restored = curator_client.get(  # the back button after htmx's history cache missed
        reverse("training:job_detail", args=[finished_job.pk]),
        headers={"HX-Request": "true", "HX-History-Restore-Request": "true"},
    )
    assert b"<html" in restored.content and b'id="job-live"' in restored.content


def test_job_list_shows_status_and_duration_in_few_queries(
    curator_client, finished_job, django_assert_max_num_queries
):
    # 8 for the page and its list, 5 for the launch preview (pairs, votes, eval prompts); the
    # preview reads comparisons 500 at a time, so it grows by two per 500, not per job or case.
    with django_assert_max_num_queries(13):
        page = curator_client.get(reverse("training:project_jobs", args=["shop"]))
    html = page.content.decode()
    assert f"#{finished_job.pk}" in html and "Succeeded" in html


def test_download_is_a_zip_with_adapter_and_model_card(curator_client, finished_job):
    response = curator_client.get(f"/api/v1/jobs/{finished_job.pk}/adapter.zip")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    names = set(archive.namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    card = archive.read("README.md").decode()
    assert finished_job.data_sha256 in card
    assert "--enable-lora --lora-modules shop-job" in card
    assert "PeftModel.from_pretrained" in card
    row = "| flagged | Return Ridge hiking boots? | 7 days. | 7 days. | not fixed |"
    assert f"{row} equals the expected answer |" in card  # an older report: exact match
    # A regression prompt is unchanged or changed, never "fixed".
    assert "| regression | Cedar tent warranty? | 5 years. | 2 years. | changed |" in card
    # Whoever unzips it can read every file (the worker's umask is not theirs).
    assert {oct(info.external_attr >> 16 & 0o777) for info in archive.infolist()} == {"0o644"}


def test_the_model_cards_commands_and_checksums_work_on_the_unzipped_files(
    curator_client, finished_job, tmp_path, monkeypatch
):
    response = curator_client.get(f"/api/v1/jobs/{finished_job.pk}/adapter.zip")
    zipped = b"".join(response.streaming_content)
    archive = zipfile.ZipFile(io.BytesIO(zipped))
    card = archive.read("README.md").decode()
    name = f"shop-job{finished_job.pk}"
    filename = response["Content-Disposition"].split('filename="')[1].rstrip('"')

    # Follow the card: unzip where it says, then the folder the serve command names is there.
    unzip = re.search(r"^unzip (\S+) -d (\S+)$", card, re.M)
    assert unzip and unzip.group(1) == filename
    archive.extractall(tmp_path / unzip.group(2))
    served = re.search(rf"--lora-modules {name}=\./(\S+)", card).group(1)
    assert (tmp_path / served / "adapter_config.json").is_file()
    loaded = re.search(r'PeftModel.from_pretrained\(base, "\./(.+)"\)', card).group(1)
    assert (tmp_path / loaded / "adapter_model.safetensors").is_file()

    # The adapter file's sha256 is in the card; the zip's is beside it (page, API, header).
    weights = hashlib.sha256(b"weights").hexdigest()
    assert f"`adapter_model.safetensors` sha256: `{weights}`" in card
    zip_sha = hashlib.sha256(zipped).hexdigest()
    assert zip_sha not in card and "cannot be written inside the zip" in card
    assert response["X-Checksum-SHA256"] == zip_sha
    status = curator_client.get(f"/api/v1/jobs/{finished_job.pk}").json()
    assert status["artifact_sha256"] == zip_sha
    page = curator_client.get(reverse("training:job_detail", args=[finished_job.pk]))
    assert zip_sha in page.content.decode()

    # The card's recipe for the data snapshot hash gives the job's hash.
    assert "sha256sum data-snapshot.json" in card
    snapshot = archive.read("data-snapshot.json")
    assert hashlib.sha256(snapshot).hexdigest() == finished_job.data_sha256
    assert json.loads(snapshot)["pairs"][0]["chosen"] == "30 days."


def test_the_model_card_lists_the_last_steps_metrics(finished_job):
    card = artifacts.model_card(job=finished_job, report=REPORT, metrics={"loss": 0.25, "nll": 1})
    assert "| loss | 0.2500 |" in card and "| nll | 1.0000 |" in card
    empty = artifacts.model_card(job=finished_job, report=REPORT, metrics={})
    assert "No training step was recorded." in empty


def test_the_model_card_says_the_base_was_4bit_in_training(finished_job):
    precision = {
        "base_in_training": "4bit NF4 (compute bfloat16)",
        "base_quantized_in_training": True,
        "eval": "4bit NF4 (compute bfloat16)",
    }
    card = artifacts.model_card(job=finished_job, report=REPORT | {"precision": precision})
    assert "- Base in training: 4bit NF4 (compute bfloat16)" in card
    assert "- Before/after answers computed on: 4bit NF4 (compute bfloat16) base" in card
    assert "Trained on a 4-bit base (QLoRA)" in card
    plain = artifacts.model_card(job=finished_job, report=REPORT)
    assert "4-bit" not in plain


def test_a_patch_on_a_deployed_adapter_ships_both_as_one_lora(
    curator_client, project, curator, model_folder, tmp_path, artifact_root
):
    deployed = artifact_root / "deployed"  # under ARTIFACT_ROOT, one of the model roots
    deployed.mkdir()
    (deployed / "adapter_config.json").write_text('{"r": 8}')
    (deployed / "adapter_model.safetensors").write_bytes(b"weights")
    job = services.job_enqueue(
        project=project, actor=curator.user, config={"epochs": 3, "adapter": str(deployed)}
    )
    out = tmp_path / "out"
    for folder in (out, out / "combined"):  # as the engine writes them
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text('{"r": 24}')
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    stacked = {"path": str(deployed), "identity": "0123", "combined": "combined",
               "combined_rank": 24, "combined_refused": None}  # fmt: skip
    report = {**REPORT, "stacked_on_adapter": stacked}
    services.job_claim(job_id=job.pk, worker_name="gpu0@test")
    path, sha256 = artifacts.write_adapter_zip(job=job, adapter_dir=out, report=report)
    services.job_succeed(job_id=job.pk, report=report, metrics_series=[], latest_metrics={},
                         artifact_path=path, artifact_sha256=sha256)  # fmt: skip
    page = curator_client.get(reverse("training:job_detail", args=[job.pk])).content.decode()
    assert "holds it and this patch as one LoRA (rank 24)" in page

    archive = zipfile.ZipFile(artifact_root / path)
    assert {"adapter_model.safetensors", "combined/adapter_config.json",
            "combined/adapter_model.safetensors"} <= set(archive.namelist())  # fmt: skip
    card = archive.read("README.md").decode()
    name = f"shop-job{job.pk}"
    # vLLM takes only 1, 8, 16, 32, ... as --max-lora-rank: rank 24 needs 32
    assert f"--lora-modules {name}=./{name}/combined --max-lora-rank 32" in card
    assert f'PeftModel.from_pretrained(base, "./{name}/combined")' in card
    assert f"serve it in place of `{deployed}`" in card

    refused = {**stacked, "combined": None, "combined_rank": None,
               "combined_refused": "adapter sets use_dora"}  # fmt: skip
    card = artifacts.model_card(job=job, report={**REPORT, "stacked_on_adapter": refused})
    assert "could not be combined into one LoRA (adapter sets use_dora)" in card
    assert "merge_and_unload" in card and f"--lora-modules {name}=./{name}\n" in card


def test_a_tampered_adapter_is_refused_not_downloaded(curator_client, finished_job, artifact_root):
    path = artifact_root / finished_job.artifact_path
    path.write_bytes(path.read_bytes() + b"tampered")

    api = curator_client.get(f"/api/v1/jobs/{finished_job.pk}/adapter.zip")
    assert api.status_code == 409 and "does not match the sha256" in api.json()["detail"]
    page = curator_client.get(reverse("training:job_download", args=[finished_job.pk]))
    assert page.status_code == 409 and b"does not match the sha256" in page.content


def test_cancel_through_the_api(curator_client, project, model_folder):
    job_id = curator_client.post(
        "/api/v1/projects/shop/jobs", {}, content_type="application/json"
    ).json()["id"]
    response = curator_client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    again = curator_client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_line_chart_is_plain_svg():
    svg = line_chart([{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.5}], "loss")
    assert svg.startswith("<svg") and "<polyline" in svg and "<script" not in svg
    assert "no steps yet" in line_chart([], "loss")


def test_job_endpoints_are_in_the_openapi_schema(curator_client):
    paths = curator_client.get("/api/v1/openapi.json").json()["paths"]
    assert "post" in paths["/api/v1/projects/{slug}/jobs"]
    assert {"/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel",
            "/api/v1/jobs/{job_id}/adapter.zip"} <= set(paths)  # fmt: skip


def test_a_job_may_ask_for_an_sft_warmup_and_the_report_says_which_was_used(
    curator_client, project, model_folder
):
    response = curator_client.post(
        "/api/v1/projects/shop/jobs",
        {"config": {"sft_warmup_epochs": 2, "epochs": 1}},
        content_type="application/json",
    )
    assert response.status_code == 202
    job = TrainingJob.objects.get(pk=response.json()["id"])
    assert job.config["sft_warmup_epochs"] == 2
    bad = curator_client.post(
        "/api/v1/projects/shop/jobs",
        {"config": {"sft_warmup_epochs": -1}},
        content_type="application/json",
    )
    assert bad.status_code == 400 and "sft_warmup_epochs" in bad.json()["detail"]


def test_the_report_names_the_mitigation(curator_client, finished_job):
    report = {**REPORT, "training": {**REPORT["training"], "mitigation": "SFT warm-up (2 epochs)"}}
    TrainingJob.objects.filter(pk=finished_job.pk).update(report=report)
    page = curator_client.get(reverse("training:job_detail", args=[finished_job.pk]))
    assert "SFT warm-up (2 epochs)" in page.content.decode()


def test_the_launch_form_says_how_many_pairs_and_prompts_before_the_click(
    curator_client, annotator, model_folder
):
    """Three flagged cases, overlap 2: one agreed vote (a pair), one split vote (no pair), one
    not judged yet; plus a held-out and a regression case."""
    from accounts.services import user_create
    from annotate.models import Comparison
    from annotate.services import judgment_submit

    project = project_create(name="Votes", slug="votes", overlap=2)
    for n in range(3):
        case_create(project=project, prompt=f"Question {n}?", response=f"Wrong {n}.",
                    better_response=f"Right {n}.")  # fmt: skip
    case_create(project=project, prompt="Held?", response="x", better_response="y", split="heldout")
    case_create(project=project, prompt="Same?", response="Same.", split="regression")
    second, _ = user_create(username="bob", role="annotator", password="Bob-pw-12345!")
    agreed, split, _waiting = Comparison.objects.filter(project=project).order_by("id")
    for judge in (annotator.user, second):
        judgment_submit(comparison=agreed, annotator=judge, choice="a")
    judgment_submit(comparison=split, annotator=annotator.user, choice="a")
    judgment_submit(comparison=split, annotator=second, choice="b")

    page = curator_client.get(reverse("training:project_jobs", args=["votes"]))
    preview = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page.content.decode()))
    assert (
        "Launched now, this job trains on 1 preference pair and checks 5 eval prompts "
        "(3 flagged, 1 held-out, 1 regression)." in preview
    )
    assert "1 judged comparison gives no pair (a tie, both bad, or a split vote)." in preview
    assert "1 comparison is not judged yet." in preview

    launched = curator_client.post(
        reverse("training:project_jobs", args=["votes"]),
        {"model": str(model_folder), "epochs": 3, "beta": 0.1, "loss": "sigmoid",
         "sft_weight": 1, "lr": 0.001, "lora_r": 16},
    )  # fmt: skip
    assert launched.status_code == 302
    job = TrainingJob.objects.get(project=project)
    assert (job.pair_count, job.eval_count) == (1, 5)


def test_the_launch_form_says_so_when_there_is_no_pair_yet(curator_client, model_folder):
    project_create(name="Fresh", slug="fresh")
    page = curator_client.get(reverse("training:project_jobs", args=["fresh"]))
    assert "No preference pairs yet" in page.content.decode()


def test_held_out_is_spelt_one_way_on_the_job_page_and_the_model_card(
    curator_client, project, curator, model_folder
):
    heldout = {"prompt": "Ridge boots on sale?", "kind": "heldout", "expected": "Yes.",
               "before": "No.", "after": "Yes.", "fixed": True, "changed": True}  # fmt: skip
    summary = {**REPORT["summary"], "heldout": {"total": 1, "with_expected": 1, "fixed": 1,
                                                "changed": 1, "unchanged": 0}}  # fmt: skip
    report = {**REPORT, "summary": summary, "eval": [*REPORT["eval"], heldout]}
    job = services.job_enqueue(project=project, actor=curator.user, config={"epochs": 3})
    services.job_claim(job_id=job.pk, worker_name="gpu0@test")
    services.job_succeed(job_id=job.pk, report=report, metrics_series=[], latest_metrics={},
                         artifact_path="", artifact_sha256="")  # fmt: skip
    page = curator_client.get(reverse("training:job_detail", args=[job.pk])).content.decode()
    words = re.sub(r"<[^>]+>", " ", page)  # what a person reads, not attribute values
    assert "Held-out prompts" in words and "held-out fixed" in words
    assert "heldout" not in words.lower()
    job.refresh_from_db()
    card = artifacts.model_card(job=job, report=report)
    assert "- held-out: 1/1 fixed" in card and "| held-out | Ridge boots on sale? |" in card
    assert "heldout" not in card


LLAMA_8B_CONFIG = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}


def test_the_memory_plan_is_shown_before_the_click_and_checked_at_launch(
    curator_client, project, model_folder, settings
):
    """From the model's config.json alone (no weights, no GPU in the web process)."""
    (model_folder / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))

    def form_text() -> str:
        page = curator_client.get(reverse("training:project_jobs", args=["shop"]))
        return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page.content.decode())))

    assert "this job needs about" in form_text()
    assert "set PATCHWISE_WORKER_GPU_MEMORY_GIB to check that it fits" in form_text()

    settings.PATCHWISE_WORKER_GPU_MEMORY_GIB = 24
    assert re.search(r"this job needs about \d+\.\d GiB on the worker's GPU \(of 24\.0 GiB\): "
                     r"fits \(micro-batch \d", form_text())  # fmt: skip
    launched = curator_client.post(
        "/api/v1/projects/shop/jobs", {"config": {"epochs": 2}}, content_type="application/json"
    )
    assert launched.status_code == 202
    plan = launched.json()["memory_plan"]
    assert plan["fits"] and 15 < plan["estimate_gib"] <= 24
    assert plan["available_source"] == "the worker's GPU"
    page = curator_client.get(reverse("training:job_detail", args=[launched.json()["id"]]))
    assert plan["summary"] in html.unescape(page.content.decode())

    settings.PATCHWISE_WORKER_GPU_MEMORY_GIB = 12  # an 8B base in bf16 needs more
    refused = curator_client.post(
        "/api/v1/projects/shop/jobs", {"config": {"epochs": 2}}, content_type="application/json"
    )
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert detail.startswith("not enough memory") and "--quantize 4bit" in detail
    assert "not enough memory" in form_text()
    quantized = curator_client.post(
        "/api/v1/projects/shop/jobs",
        {"config": {"epochs": 2, "quantize": "4bit"}},
        content_type="application/json",
    )
    assert quantized.status_code == 202
    assert "4-bit base" in quantized.json()["memory_plan"]["summary"]
