"""The verdict rule: checks, else exact match after normalisation, else no verdict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.engine.checks import (
    CheckError,
    clean_checks,
    describe_rule,
    normalize,
    parse_checks_cell,
    prefers_good_answer,
    regression_changed,
    verdict,
)

REPHRASED = (
    "Our return window for the Summit boots is 30 days from delivery. Anything else I can "
    "help with?"
)
EXPECTED = "You can return the Summit hiking boots within 30 days of delivery."


def test_a_rephrased_right_answer_passes_its_checks_where_exact_match_fails() -> None:
    assert verdict(REPHRASED, expected=EXPECTED).passed is False
    result = verdict(
        REPHRASED, expected=EXPECTED, must_include=["30 days"], must_not_include=["7 days"]
    )
    assert result.passed is True
    assert result.rule == "checks"
    assert REPHRASED[slice(*result.hits[0].spans[0])] == "30 days"


def test_an_excluded_phrase_fails_the_answer_and_says_which() -> None:
    result = verdict(
        "Returns are accepted within 7 days. We also say 30 days elsewhere.",
        must_include=["30 days"],
        must_not_include=["7 days"],
    )
    assert result.passed is False
    assert "contains '7 days'" in result.reason
    missing = verdict("No idea.", must_include=["30 days", "/refund(s)?/"])
    assert missing.passed is False
    assert missing.reason == "lacks '30 days', /refund(s)?/"


def test_matching_ignores_case_unicode_forms_and_spacing() -> None:
    # full-width digits, a no-break space, a line break and capitals all normalise away
    answer = "Within ３０\u00a0DAYS\nof delivery"
    result = verdict(answer, must_include=["30 days of  delivery"])
    assert result.passed is True
    start, end = result.hits[0].spans[0]
    assert answer[start:end] == "３０\u00a0DAYS\nof delivery"
    # a decomposed é matches a composed one, and the highlight keeps its accent
    assert verdict("Cafe\u0301 open", must_include=["café"]).hits[0].spans == ((0, 5),)
    assert normalize("  Straße \t ok ") == "strasse ok"


def test_regex_items_are_searched_case_insensitively() -> None:
    assert verdict("Refunds take 30 days", must_include=[r"/\b30 ?days\b/"]).passed is True
    assert verdict("REFUND issued", must_include=["/refunds?/"]).passed is True
    assert verdict("300 days", must_include=[r"/\b30 days/"]).passed is False


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["/(unclosed/"], "must_include item 1 '/(unclosed/' is not a valid regular expression"),
        (["ok", "  "], "must_include item 2 is empty"),
        (["//"], "is an empty pattern"),
        (["/x*/"], "matches an empty answer"),
        ([3], "must_include item 1 must be a string, not int"),
        ({"a": 1}, "must_include must be a list"),
        (["x"] * 51, "at most 50"),
    ],
)
def test_bad_checks_are_refused_with_the_reason(value, message) -> None:
    with pytest.raises(CheckError, match=message.replace("(", r"\(").replace("*", r"\*")):
        clean_checks(value, name="must_include")


def test_clean_checks_keeps_order_strips_and_drops_repeats() -> None:
    assert clean_checks(None, name="x") == []
    assert clean_checks("30 days", name="x") == ["30 days"]
    assert clean_checks([" 30 days ", "/a+/", "30 days"], name="x") == ["30 days", "/a+/"]


def test_without_checks_the_old_exact_rule_holds_and_without_anything_no_verdict() -> None:
    assert verdict("  The answer.\n", expected="The answer.").passed is True
    assert verdict("The  answer.", expected="The answer.").passed is True  # spacing aside
    assert verdict("the answer.", expected="The answer.").passed is False  # case kept
    assert verdict("anything", expected=None).passed is None
    assert verdict("anything", expected=None).rule == "none"
    # checks win over expected
    assert verdict("other words, 30 days", expected="x", must_include=["30 days"]).passed


def test_the_rule_in_words() -> None:
    assert (
        describe_rule(must_include=["30 days"], must_not_include=["7 days", "/14 ?days/"])
        == "contains '30 days', does not contain '7 days' or /14 ?days/"
    )
    assert describe_rule(expected="x").startswith("equals the expected answer")
    assert describe_rule().startswith("no rule")


def test_csv_cells_hold_a_json_list_or_one_phrase_per_line() -> None:
    assert parse_checks_cell('["30 days, from delivery", "/x/"]') == [
        "30 days, from delivery",
        "/x/",
    ]
    assert parse_checks_cell("30 days, from delivery\n\n/refund/\n") == [
        "30 days, from delivery",
        "/refund/",
    ]
    with pytest.raises(CheckError, match="JSON list"):
        parse_checks_cell('["unclosed')


def test_preference_needs_a_positive_margin_that_grew() -> None:
    assert prefers_good_answer(-2.0, 1.0) is True
    assert prefers_good_answer(3.0, 2.0) is False  # positive, but shrank
    assert prefers_good_answer(-5.0, -1.0) is False  # grew, still negative
    assert prefers_good_answer(None, 1.0) is None


def test_a_regression_answer_changes_only_when_it_differs_and_fails_or_drifts() -> None:
    no_checks = verdict("new words", expected="old words")
    with_checks = verdict("new words, 30 days", must_include=["30 days"])
    assert not regression_changed(identical=True, check=no_checks, drift=-9.0, tolerance=0.5)
    assert not regression_changed(identical=False, check=no_checks, drift=-0.1, tolerance=0.5)
    assert regression_changed(identical=False, check=no_checks, drift=-0.9, tolerance=0.5)
    assert not regression_changed(identical=False, check=with_checks, drift=-9.0, tolerance=0.5)
    failing = verdict("new words", must_include=["30 days"])
    assert regression_changed(identical=False, check=failing, drift=0.0, tolerance=0.5)


@given(
    prefix=st.text(max_size=30),
    phrase=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=10),
    suffix=st.text(max_size=30),
)
def test_a_phrase_inside_any_text_is_found_and_its_span_reads_as_the_phrase(
    prefix: str, phrase: str, suffix: str
) -> None:
    answer = f"{prefix} {phrase} {suffix}"
    result = verdict(answer, must_include=[phrase])
    assert result.passed is True
    assert any(
        normalize(answer[start:end]) == normalize(phrase) for start, end in result.hits[0].spans
    )
