"""Case files: the three line shapes, conversational prompts, all-or-nothing, limits."""

import json

import pytest
from django.core.exceptions import ValidationError

from accounts.models import AuditEvent
from annotate.field_rules import MAX_TEXT_CHARS
from annotate.importing import ImportRejected
from annotate.models import Case, Comparison, Response
from annotate.services import case_create, cases_import


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


GOOD = [
    {"prompt": "Return window for boots?", "response": "7 days.", "better_response": "30 days."},
    {"prompt": "Tent warranty?", "response": "5 years.", "split": "regression", "topic": "tents"},
    {"prompt": "Which is kinder?", "response_a": "Go away.", "response_b": "Happy to help!"},
    {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Whatever.", "tags": ["greeting"]},
    {
        "prompt": [
            {"role": "system", "content": "You are a shop assistant."},
            {"role": "user", "content": "Can I return sandals?"},
        ],
        "response": "No.",
        "better_response": "Yes, within 30 days.",
        "trace_id": "tr-42",
        "note": "stale policy",
    },
]


def test_jsonl_with_every_shape_imports(project, curator):
    result = cases_import(
        project=project, file_name="cases.jsonl", data=jsonl(*GOOD), actor=curator.user
    )
    assert (result.cases, result.comparisons, result.labelled_pairs) == (5, 4, 1)
    assert str(result) == "5 cases, 4 comparisons (1 already labelled)"
    boots = Case.objects.get(prompt="Return window for boots?")
    assert boots.flagged and boots.split == "train" and boots.source == "import:cases.jsonl"
    comparison = boots.comparisons.get()
    assert {comparison.response_a.origin, comparison.response_b.origin} == {"deployed", "human"}
    assert comparison.needs_judgments
    regression = Case.objects.get(split="regression")
    assert not regression.flagged and regression.topic == "tents"
    assert not regression.comparisons.exists()
    labelled = Comparison.objects.get(label="a")
    assert (labelled.response_a.text, labelled.response_b.text) == ("Hi!", "Whatever.")
    assert not labelled.needs_judgments
    chat = Case.objects.get(trace_id="tr-42")
    assert chat.prompt[0] == {"role": "system", "content": "You are a shop assistant."}
    assert chat.note == "stale policy"
    assert AuditEvent.objects.get(action="cases.import").new_value["cases"] == 5


def test_csv_with_a_json_conversation_in_the_prompt_column(project):
    conversation = json.dumps([{"role": "user", "content": "Hello, can I return boots?"}])
    data = (
        "prompt,response,better_response,tags\n"
        f'"{conversation.replace(chr(34), chr(34) * 2)}",No.,"Yes, within 30 days.","a, b"\n'
        '"Multi-line\nprompt",Sure.,,\n'
    ).encode()
    result = cases_import(project=project, file_name="cases.csv", data=data)
    assert result.cases == 2 and result.comparisons == 1
    first, second = Case.objects.order_by("id")
    assert first.prompt == [{"role": "user", "content": "Hello, can I return boots?"}]
    assert first.tags == ["a", "b"]
    assert second.prompt == "Multi-line\nprompt"
    assert not second.comparisons.exists()


@pytest.mark.parametrize(
    "file_name, data, bad_line, reason",
    [
        (
            "cases.jsonl",
            jsonl(GOOD[0], GOOD[2], {"prompt": "x", "respnse": "typo"}, GOOD[3]),
            3,
            "unknown field(s) respnse",
        ),
        (
            "cases.jsonl",
            jsonl(GOOD[0]) + b"{not json\n" + jsonl(GOOD[1]),
            2,
            "not valid JSON",
        ),
        (
            "cases.csv",
            b"prompt,response\nQ1,A1\nQ2,A2\n,A3\nQ4,A4\n",
            4,
            "prompt is missing",
        ),
        (
            "cases.csv",
            b'prompt,response\nQ1,A1\n"[{""role"": ""user""",A2\n',
            3,
            "looks like a JSON list of messages",
        ),
    ],
)
def test_one_bad_line_imports_nothing_and_names_the_line(
    project, file_name, data, bad_line, reason
):
    with pytest.raises(ImportRejected) as rejected:
        cases_import(project=project, file_name=file_name, data=data)
    assert [line for line, _ in rejected.value.errors] == [bad_line]
    assert reason in rejected.value.errors[0][1]
    assert f"line {bad_line}: " in str(rejected.value)
    assert not Case.objects.exists() and not Response.objects.exists()


def test_every_bad_line_is_reported(project):
    data = jsonl(
        {"prompt": "", "response": "x"},
        GOOD[0],
        {"prompt": "q", "response_a": "same", "response_b": "same"},
        {"prompt": "q", "response": "r", "chosen": "c", "rejected": "d"},
        {
            "prompt": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}],
            "response": "r",
        },
        {"prompt": "q", "response": "r", "split": "test"},
        ["not", "an", "object"],
    )
    with pytest.raises(ImportRejected) as rejected:
        cases_import(project=project, file_name="cases.jsonl", data=data)
    errors = dict(rejected.value.errors)
    assert sorted(errors) == [1, 3, 4, 5, 6, 7]
    assert "prompt is empty" in errors[1]
    assert "same text" in errors[3]
    assert "mixes case and labelled" in errors[4]
    assert "system message may only come first" in errors[5]
    assert "split must be one of train, heldout, regression" in errors[6]
    assert "expected a JSON object" in errors[7]
    assert not Case.objects.exists()


def test_a_file_over_the_size_limit_is_refused_with_the_limit(project, settings):
    settings.PATCHWISE_MAX_UPLOAD_BYTES = 1000
    with pytest.raises(ImportRejected) as rejected:
        cases_import(project=project, file_name="big.jsonl", data=jsonl(*GOOD * 20))
    ((line, reason),) = rejected.value.errors
    assert line is None
    assert reason.startswith("big.jsonl is ")
    assert "; the limit is 1.0 kB (PATCHWISE_MAX_UPLOAD_BYTES): split the file" in reason
    assert not Case.objects.exists()


def test_a_text_over_the_length_limit_is_refused_naming_field_and_limit(project):
    long = "x" * (MAX_TEXT_CHARS + 1)
    with pytest.raises(ImportRejected) as rejected:
        cases_import(
            project=project,
            file_name="cases.jsonl",
            data=jsonl(GOOD[0], {"prompt": "q", "response": long}),
        )
    ((line, reason),) = rejected.value.errors
    assert line == 2
    assert reason == "response has 100,001 characters; the limit is 100,000 per field"


def test_a_file_that_is_not_utf8_or_empty_is_refused(project):
    with pytest.raises(ImportRejected, match="not UTF-8"):
        cases_import(project=project, file_name="cases.csv", data=b"prompt\n\xff\xfe\n")
    with pytest.raises(ImportRejected, match="has no cases"):
        cases_import(project=project, file_name="cases.jsonl", data=b"\n\n")


def test_case_create_checks_its_fields(project):
    with pytest.raises(ValidationError) as error:
        case_create(project=project, prompt=[{"role": "assistant", "content": "hi"}], split="x")
    assert set(error.value.message_dict) == {"prompt", "split"}
    with pytest.raises(ValidationError, match="must not change"):
        case_create(project=project, prompt="q", split="regression")
    assert not Case.objects.exists()


def test_a_heldout_case_with_a_better_answer_is_not_queued(project):
    case = case_create(
        project=project, prompt="q", response="bad", better_response="good", split="heldout"
    )
    assert not case.flagged
    assert not case.comparisons.exists()
    assert case.responses.count() == 2


def test_values_postgresql_cannot_store_or_json_cannot_read_are_line_errors(project):
    lines = [
        json.dumps({"prompt": "a\u0000b", "response": "x"}),
        '{"prompt": "a\\ud800", "response": "x"}',  # an unpaired surrogate
        json.dumps({"prompt": "q", "response": None}),
        json.dumps({"prompt": None, "response": "x"}),
        '{"prompt": "q", "response": "x", "trace_id": NaN}',
        '{"prompt": "q", "response": "x", "trace_id": ' + "9" * 5000 + "}",
        '{"prompt": ' + "[" * 5000 + "}",
        json.dumps({"prompt": "q", "response": "x", "tags": ["ok", "b\u0000d"]}),
    ]
    with pytest.raises(ImportRejected) as rejected:
        cases_import(project=project, file_name="cases.jsonl", data="\n".join(lines).encode())
    errors = dict(rejected.value.errors)
    assert sorted(errors) == list(range(1, 9))
    assert "prompt contains a NUL character" in errors[1]
    assert "prompt contains an unpaired UTF-16 surrogate" in errors[2]
    assert errors[3] == "response is null" and errors[4] == "prompt is null"
    assert "NaN is not a JSON value" in errors[5]
    assert "digits" in errors[6] and "nested too deeply" in errors[7]
    assert "a tag contains a NUL character" in errors[8]
    assert not Case.objects.exists()


def test_an_export_with_unicode_line_separators_imports_again(project):
    # json.dumps(..., ensure_ascii=False) writes U+2028 and U+0085 raw inside strings
    rows = [
        {"prompt": "first\u2028second", "chosen": "a\u0085b", "rejected": "c"},
        {"prompt": "plain", "chosen": "yes", "rejected": "no"},
    ]
    data = "".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows).encode()
    cases_import(project=project, file_name="pairs.jsonl", data=data)
    assert sorted(Case.objects.values_list("prompt", flat=True)) == ["first\u2028second", "plain"]


def test_a_csv_answer_that_is_a_json_array_stays_text(project):
    data = (
        b"prompt,response_a,response_b\n"
        b'list users,"[{""id"": 1, ""name"": ""bob""}]","[{bad} is how we write sets"\n'
        b'say hi,"[{""role"": ""assistant"", ""content"": ""Hi!""}]",Hello.\n'
    )
    cases_import(project=project, file_name="pairs.csv", data=data)
    texts = set(Response.objects.values_list("text", flat=True))
    assert texts == {'[{"id": 1, "name": "bob"}]', "[{bad} is how we write sets", "Hi!", "Hello."}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("prompt,response,", "column 3 has no name"),
        ("prompt,response,response", "column(s) response appear more than once"),
    ],
)
def test_a_csv_header_with_a_blank_or_repeated_column_is_refused(project, header, reason):
    with pytest.raises(ImportRejected) as rejected:
        cases_import(project=project, file_name="c.csv", data=f"{header}\nq,a,b\n".encode())
    assert rejected.value.errors == [(1, rejected.value.errors[0][1])]
    assert reason in rejected.value.errors[0][1]


def test_pairs_outside_train_are_refused_or_become_held_out_cases(project):
    from annotate.selectors import eval_prompts

    with pytest.raises(ImportRejected) as rejected:
        cases_import(
            project=project,
            file_name="c.jsonl",
            data=jsonl(
                {"prompt": "q1", "response_a": "x", "response_b": "y", "split": "heldout"},
                {"prompt": "q2", "chosen": "x", "rejected": "y", "split": "regression"},
            ),
        )
    errors = dict(rejected.value.errors)
    assert "heldout prompts are never queued" in errors[1]
    assert "regression prompt holds the answer that must not change" in errors[2]

    data = jsonl(
        {"prompt": "Boots?", "chosen": "30 days.", "rejected": "7 days.", "split": "heldout"}
    )
    result = cases_import(project=project, file_name="c.jsonl", data=data)
    assert result.cases == 1 and result.comparisons == 0 and not Comparison.objects.exists()
    assert eval_prompts(project=project) == [
        {
            "prompt": "Boots?",
            "kind": "heldout",
            "case_id": Case.objects.get().pk,
            "expected": "30 days.",
            "rejected": "7 days.",
        }
    ]


def test_checks_come_in_with_jsonl_and_csv_lines(project):
    line = GOOD[0] | {"must_include": ["30 days", r"/refund(s)?/"], "must_not_include": "7 days"}
    cases_import(project=project, file_name="cases.jsonl", data=jsonl(line))
    case = Case.objects.get()
    assert case.must_include == ["30 days", "/refund(s)?/"]
    assert case.must_not_include == ["7 days"]
    data = (
        b"prompt,response,must_include,must_not_include\n"
        b'"Tent warranty?",5 years.,"2 years, parts and labour\n/warrant(y|ies)/",'
        b'"[""5 years""]"\n'
    )
    cases_import(project=project, file_name="more.csv", data=data)
    tent = Case.objects.get(prompt="Tent warranty?")
    assert tent.must_include == ["2 years, parts and labour", "/warrant(y|ies)/"]
    assert tent.must_not_include == ["5 years"]


def test_an_invalid_regex_rejects_the_line_with_the_reason(project):
    bad = GOOD[0] | {"must_include": ["/(30 days/"]}
    with pytest.raises(ImportRejected) as rejected:
        cases_import(project=project, file_name="cases.jsonl", data=jsonl(GOOD[1], bad))
    (message,) = rejected.value.messages()
    assert message.startswith("line 2: must_include item 1 '/(30 days/' is not a valid regular")
    assert "missing )" in message
    assert not Case.objects.exists()


def test_case_create_validates_checks(project):
    with pytest.raises(ValidationError) as refused:
        case_create(project=project, prompt="q", response="r", must_not_include=["", "x"])
    assert refused.value.message_dict == {"must_not_include": ["must_not_include item 1 is empty"]}
    case = case_create(project=project, prompt="q", response="r", must_include=["30 days"])
    assert case.must_include == ["30 days"] and case.must_not_include == []
