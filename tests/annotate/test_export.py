"""The export rules (docs/export-rules.md), one small project that exercises each of them."""

import pytest

from annotate.selectors import eval_prompts, preference_pairs
from annotate.services import (
    case_create,
    comparison_create,
    judgment_submit,
    project_create,
    response_create,
)


def pair(project, prompt, a="A text", b="B text"):
    case = case_create(project=project, prompt=prompt, source="test")
    response_a = response_create(case=case, text=f"{a} ({prompt})", origin="imported")
    response_b = response_create(case=case, text=f"{b} ({prompt})", origin="imported")
    return comparison_create(case=case, response_a=response_a, response_b=response_b)


def judge(comparison, users, *choices, edited=("",) * 3):
    for user, choice, text in zip(users, choices, edited, strict=False):
        judgment_submit(comparison=comparison, annotator=user, choice=choice, edited=text)


@pytest.fixture
def voters(make_user):
    return [make_user(f"voter{i}") for i in range(3)]


@pytest.fixture
def exported(voters):
    project = project_create(name="Rules", slug="rules", overlap=3)
    judge(pair(project, "a wins"), voters, "a")
    judge(pair(project, "b wins"), voters, "b")
    judge(pair(project, "tie"), voters, "tie")
    judge(pair(project, "both bad"), voters, "both_bad")
    judge(pair(project, "both bad fixed"), voters, "both_bad", edited=["Fixed answer."])
    judge(pair(project, "a fixed"), voters, "a", edited=["A, improved."])
    judge(pair(project, "majority b"), voters, "a", "b", "b")
    judge(pair(project, "split"), voters, "a", "b")
    judge(pair(project, "split three"), voters, "a", "b", "tie")
    judge(pair(project, "majority tie"), voters, "tie", "tie", "a")
    pair(project, "unjudged")
    heldout = case_create(
        project=project, prompt="held out", response="bad", better_response="good", split="heldout"
    )
    comparison_create(
        case=heldout, response_a=heldout.responses.all()[0], response_b=heldout.responses.all()[1]
    )
    judge(heldout.comparisons.get(), voters, "b")
    case_create(project=project, prompt="flagged", response="7 days.", better_response="30 days.")
    flagged = project.comparisons.get(case__prompt="flagged")
    judge(flagged, voters, "b")
    rows = preference_pairs(project=project)
    return project, [(row["prompt"], row["chosen"], row["rejected"]) for row in rows]


def test_each_export_rule(exported):
    _project, rows = exported
    assert rows == [
        ("a wins", "A text (a wins)", "B text (a wins)"),
        ("b wins", "B text (b wins)", "A text (b wins)"),
        ("both bad fixed", "Fixed answer.", "A text (both bad fixed)"),
        ("both bad fixed", "Fixed answer.", "B text (both bad fixed)"),
        ("a fixed", "A text (a fixed)", "B text (a fixed)"),
        ("a fixed", "A, improved.", "A text (a fixed)"),
        ("a fixed", "A, improved.", "B text (a fixed)"),
        ("majority b", "B text (majority b)", "A text (majority b)"),
        ("flagged", "30 days.", "7 days."),
    ]


def test_trl_format_has_only_the_three_keys_and_conversations_stay_conversations(annotator):
    project = project_create(name="Chat", slug="chat")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Return window?"},
    ]
    case_create(project=project, prompt=messages, response="7 days.", better_response="30 days.")
    judgment_submit(comparison=project.comparisons.get(), annotator=annotator.user, choice="b")
    (row,) = preference_pairs(project=project, trl=True)
    assert row == {
        "prompt": messages,
        "chosen": [{"role": "assistant", "content": "30 days."}],
        "rejected": [{"role": "assistant", "content": "7 days."}],
    }
    (full,) = preference_pairs(project=project)
    assert full["comparison_id"] == project.comparisons.get().pk


def test_eval_prompts_give_each_kind_its_expected_answer(annotator, curator):
    project = project_create(name="Eval", slug="eval")
    corrected = case_create(project=project, prompt="boots?", response="7", better_response="30")
    judgment_submit(
        comparison=corrected.comparisons.get(),
        annotator=annotator.user,
        choice="both_bad",
        edited="30 days, unworn.",
    )
    case_create(project=project, prompt="sandals?", response="7", better_response="30", topic="fw")
    case_create(project=project, prompt="no answer yet?", response="7")
    case_create(
        project=project, prompt="runners?", response="7", better_response="30", split="heldout"
    )
    case_create(project=project, prompt="tents?", response="30 days.", split="regression")
    case_create(project=project, prompt="just a pair", flagged=False)
    items = [
        (item["kind"], item["prompt"], item.get("expected"), item.get("topic"))
        for item in eval_prompts(project=project)
    ]
    assert items == [
        ("flagged", "boots?", "30 days, unworn.", None),
        ("flagged", "sandals?", "30", "fw"),
        ("flagged", "no answer yet?", None, None),
        ("heldout", "runners?", "30", None),
        ("regression", "tents?", "30 days.", None),
    ]
