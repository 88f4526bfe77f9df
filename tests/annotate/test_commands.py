"""create_project, import_cases, export_pairs and seed_demo, run as a user runs them."""

import json
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.roles import is_curator
from annotate.models import Case, Project
from annotate.services import judgment_submit


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_project(db):
    out, _ = run("create_project", "support", "--name", "Support bot", "--overlap", "2")
    assert out.strip() == "created project support (overlap 2)"
    project = Project.objects.get(slug="support")
    assert (project.name, project.overlap) == ("Support bot", 2)
    with pytest.raises(CommandError, match="already exists"):
        run("create_project", "support")
    with pytest.raises(CommandError, match="overlap"):
        run("create_project", "other", "--overlap", "0")


def test_import_cases_prints_counts(project, tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(
        json.dumps({"prompt": "q", "response": "bad", "better_response": "good"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
        + "\n"
    )
    out, _ = run("import_cases", "support", str(path))
    assert out.strip() == "imported 2 cases, 2 comparisons (1 already labelled) into support"


def test_import_cases_rejects_a_bad_file_naming_each_line(project, tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("prompt,response\nq1,a1\nq2,\nq3,a3\n,a4\n")
    err = StringIO()
    with pytest.raises(CommandError, match="2 problem"):
        call_command("import_cases", "support", str(path), stdout=StringIO(), stderr=err)
    assert err.getvalue().splitlines() == [
        f"{path}: line 3: a line needs exactly one of: response (a bad case), response_a + "
        "response_b (a pair to judge), chosen + rejected (a labelled pair)",
        f"{path}: line 5: prompt is missing",
    ]
    assert not Case.objects.exists()


def test_import_cases_into_a_missing_project(db, tmp_path):
    with pytest.raises(CommandError, match="no project 'nope'"):
        run("import_cases", "nope", str(tmp_path / "x.jsonl"))


def test_export_pairs_streams_jsonl(project, annotator, tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "bad", "better_response": "good"}))
    run("import_cases", "support", str(path))
    judgment_submit(comparison=project.comparisons.get(), annotator=annotator.user, choice="b")
    out, err = run("export_pairs", "support", "--format", "trl")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"prompt": "q", "chosen": "good", "rejected": "bad"}
    ]
    assert err.strip() == "1 pairs from project support"
    out, _ = run("export_pairs", "support")
    assert set(json.loads(out)) == {"prompt", "chosen", "rejected", "comparison_id", "case_id"}


def _passwords(out: str) -> dict[str, str]:
    rows = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("demo ")]
    return dict(row.split(" / ") for row in rows if " / " in row)


def test_seed_demo_without_a_model_is_idempotent_and_resets_passwords(db, settings, tmp_path):
    settings.PATCHWISE_BASE_MODEL = str(tmp_path / "no-model")
    first, _ = run("seed_demo", "--no-model")
    passwords = _passwords(first)
    assert set(passwords) == {"curator", "annotator"}
    curator = authenticate(username="curator", password=passwords["curator"])
    assert curator is not None and is_curator(curator)
    annotator = authenticate(username="annotator", password=passwords["annotator"])
    assert annotator is not None and not is_curator(annotator)
    project = Project.objects.get(slug="demo")
    assert project.cases.filter(flagged=True).count() == 3
    assert project.comparisons.count() == 3

    again, _ = run("seed_demo", "--no-model")
    new_passwords = _passwords(again)
    assert new_passwords != passwords
    assert authenticate(username="curator", password=passwords["curator"]) is None
    assert authenticate(username="curator", password=new_passwords["curator"]) is not None
    assert Project.objects.filter(slug="demo").count() == 1
    assert project.cases.count() == 3
    assert not (tmp_path / "no-model").exists()


def test_seed_demo_imports_the_demo_scenario_once(db, settings, tmp_path):
    """A model folder that exists is not rebuilt; its scenario's cases are imported once."""
    model_dir = tmp_path / "demo-model"
    (model_dir / "scenario").mkdir(parents=True)
    rows = [
        {
            "prompt": "Boots?",
            "response": "7 days.",
            "better_response": "30 days.",
            "split": "train",
            "topic": "returns",
        },
        {"prompt": "Sandals?", "response": "7.", "better_response": "30.", "split": "heldout"},
        {"prompt": "Tent?", "response": "30 days.", "split": "regression", "topic": "tents"},
    ]
    (model_dir / "scenario" / "cases.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    settings.PATCHWISE_BASE_MODEL = str(model_dir)
    out, _ = run("seed_demo")
    assert "imported 3 cases, 1 comparisons" in out
    run("seed_demo")
    project = Project.objects.get(slug="demo")
    assert list(project.cases.values_list("split", flat=True)) == ["train", "heldout", "regression"]
    # the return questions say what a right answer must contain, however it is worded
    checks = list(project.cases.values_list("must_include", "must_not_include"))
    assert checks == [(["30 days"], [r"/\b7 days/"]), ([], []), ([], [])]


def test_the_queue_and_commands_work_on_the_embedded_sqlite(tmp_path):
    """`make up` without DATABASE_URL runs on SQLite: one person must be able to label there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_NAME")}
    env |= {"PATCHWISE_VAR_DIR": str(tmp_path), "PATCHWISE_BASE_MODEL": str(tmp_path / "none")}
    cases = tmp_path / "cases.csv"
    cases.write_text("prompt,response,better_response\nBoots?,7 days.,30 days.\nTent?,5 y.,\n")
    label = (
        "from django.contrib.auth.models import User; from annotate.models import Project; "
        "from annotate.services import flip_for, lease_next_comparison, judgment_submit; "
        "p = Project.objects.get(slug='demo'); u = User.objects.get(username='annotator'); "
        "n = 0\n"
        "while (leased := lease_next_comparison(project=p, annotator=u)):\n"
        "    c, _, left = leased; good = 'a' if '30' in c.response_a.text else 'b'\n"
        "    shown = flip_for(good, left)  # as the API's clients name it\n"
        "    j, new = judgment_submit(comparison=c, annotator=u, choice=shown, as_shown=True)\n"
        "    again = judgment_submit(comparison=c, annotator=u, choice=shown, as_shown=True)\n"
        "    assert (j.choice, new, again[0].pk, again[1]) == (good, True, j.pk, False)\n"
        "    n += 1\n"
        "print('judged', n)"
    )

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=root, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--noinput")
    manage("seed_demo", "--no-model")
    assert "imported 2 cases, 1 comparisons" in manage("import_cases", "demo", str(cases))
    assert manage("shell", "-c", label).splitlines()[-1] == "judged 4"
    pairs = [
        json.loads(line) for line in manage("export_pairs", "demo", "--format", "trl").splitlines()
    ]
    assert {"prompt": "Boots?", "chosen": "30 days.", "rejected": "7 days."} in pairs
    assert len(pairs) == 4
