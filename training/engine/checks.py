"""Whether an answer is right: the one rule the engine, the web app and the rounds all use.

A case may carry checks, two lists of phrases:

- ``must_include``: every item must be present in the answer;
- ``must_not_include``: no item may be present.

An item is a phrase, matched case-insensitively after normalising both sides (Unicode NFKC,
case folding, runs of whitespace as one space), or a regular expression written between
slashes (``/30 ?days/``), searched case-insensitively in the normalised answer.

The verdict on an answer:

- with checks: passed = every include is present and no exclude is;
- without checks but with an expected answer: passed = the answer equals it after Unicode
  (NFKC) and whitespace normalisation, case kept (the rule before checks existed, with Unicode
  forms and inner spacing forgiven, so old eval files read the same);
- with neither: no verdict (None).

Two figures that need no text are decided here too: a case "prefers the good answer" when the
patched model's log-prob margin (chosen - rejected) is positive and above the reference's, and
a regression answer "drifted" when its mean per-token log-prob moved by more than a tolerance.

Pure Python, no torch and no Django: the web app validates and previews with it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_ITEMS = 50  # per list
MAX_ITEM_CHARS = 500  # a phrase or a pattern; keeps a curator's regex from running away
FIELDS = ("must_include", "must_not_include")


class CheckError(ValueError):
    """An unusable check: the message names the field, the item and what is wrong."""


# ---------------------------------------------------------------------------- normalising


def _segments(text: str) -> list[tuple[int, str]]:
    """(start, piece): each base character with the combining marks that follow it, so that
    NFKC composes them as it would in the whole string while offsets stay known."""
    pieces: list[tuple[int, str]] = []
    for index, char in enumerate(text):
        if pieces and unicodedata.combining(char):
            start, piece = pieces[-1]
            pieces[-1] = (start, piece + char)
        else:
            pieces.append((index, char))
    return pieces


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """The normalised text and, for each of its characters, where it came from in ``text``.

    Normalised: NFKC, case-folded, whitespace runs as one space, no space at either end.
    """
    out: list[str] = []
    origin: list[int] = []
    for start, piece in _segments(text):
        for char in unicodedata.normalize("NFKC", piece).casefold():
            if char.isspace():
                if not out or out[-1] == " ":
                    continue
                char = " "
            out.append(char)
            origin.append(start)
    if out and out[-1] == " ":
        out.pop()
        origin.pop()
    return "".join(out), origin


def normalize(text: str) -> str:
    """What phrases are matched on: NFKC, case-folded, whitespace runs as one space, stripped."""
    return normalize_with_offsets(text)[0]


def _normalize_keep_case(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------- items


def is_pattern(item: str) -> bool:
    """``/.../`` is a regular expression; anything else is a phrase."""
    return len(item) >= 2 and item.startswith("/") and item.endswith("/")


def _compile(item: str) -> re.Pattern[str]:
    return re.compile(unicodedata.normalize("NFKC", item[1:-1]), re.IGNORECASE)


def clean_checks(value: Any, *, name: str) -> list[str]:
    """A list of check items as stored, or CheckError naming what is wrong.

    None and "" are no checks; a string on its own is one phrase; duplicates are dropped.
    """
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise CheckError(f"{name} must be a list of phrases or /regex/ patterns")
    if len(value) > MAX_ITEMS:
        raise CheckError(f"{name} has {len(value)} items; at most {MAX_ITEMS}")
    items: list[str] = []
    for number, item in enumerate(value, start=1):
        where = f"{name} item {number}"
        if not isinstance(item, str):
            raise CheckError(f"{where} must be a string, not {type(item).__name__}")
        item = item.strip()
        if not normalize(item):
            raise CheckError(f"{where} is empty")
        if len(item) > MAX_ITEM_CHARS:
            raise CheckError(f"{where} is longer than {MAX_ITEM_CHARS} characters")
        if "\x00" in item:
            raise CheckError(f"{where} contains a NUL character")
        if is_pattern(item):
            if not item[1:-1].strip():
                raise CheckError(f"{where} {item!r} is an empty pattern; it would match anything")
            try:
                pattern = _compile(item)
            except re.error as error:
                raise CheckError(
                    f"{where} {item!r} is not a valid regular expression: {error}"
                ) from None
            if pattern.search(""):
                raise CheckError(f"{where} {item!r} matches an empty answer, so it decides nothing")
        if item not in items:
            items.append(item)
    return items


def parse_checks_cell(cell: str) -> Any:
    """A CSV cell of checks: a JSON list, or one phrase per line (phrases may hold commas)."""
    stripped = cell.strip()
    if stripped.startswith("["):
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError) as error:
            raise CheckError(f"looks like a JSON list but is not: {error}") from None
    return [line for line in stripped.splitlines() if line.strip()]


# ---------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Hit:
    """One check item against one answer; ``spans`` are (start, end) in the original answer."""

    item: str
    kind: str  # "include" | "exclude"
    found: bool
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def decisive(self) -> bool:
        """Whether this item is a reason for the verdict (a found include, any found exclude,
        or a missing include)."""
        return self.kind == "include" or self.found

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "kind": self.kind,
            "found": self.found,
            "spans": [list(span) for span in self.spans],
        }


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: nothing to decide by
    rule: str  # "checks" | "exact" | "none"
    hits: tuple[Hit, ...] = field(default_factory=tuple)
    reason: str = ""  # in words, why

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rule": self.rule,
            "hits": [hit.to_dict() for hit in self.hits],
            "reason": self.reason,
        }


def _find(item: str, normalised: str, origin: list[int], answer: str) -> list[tuple[int, int]]:
    if is_pattern(item):
        matches = [(m.start(), m.end()) for m in _compile(item).finditer(normalised)]
    else:
        needle = normalize(item)
        matches, start = [], normalised.find(needle)
        while start != -1:
            matches.append((start, start + len(needle)))
            start = normalised.find(needle, start + len(needle))
    spans = []
    for start, end in matches:
        if end <= start:
            continue
        last = origin[end - 1]
        # end after the whole original character (and the combining marks that went with it)
        stop = last + 1
        while stop < len(answer) and unicodedata.combining(answer[stop]):
            stop += 1
        spans.append((origin[start], stop))
    return spans


def has_checks(must_include: Sequence[str] | None, must_not_include: Sequence[str] | None) -> bool:
    return bool(must_include) or bool(must_not_include)


def verdict(
    answer: str,
    *,
    expected: str | None = None,
    must_include: Sequence[str] | None = None,
    must_not_include: Sequence[str] | None = None,
) -> Verdict:
    """The rule (module docstring). Items are trusted to be valid (``clean_checks``)."""
    if has_checks(must_include, must_not_include):
        normalised, origin = normalize_with_offsets(answer)
        hits = []
        for kind, items in (("include", must_include or ()), ("exclude", must_not_include or ())):
            for item in items:
                spans = _find(item, normalised, origin, answer)
                hits.append(Hit(item=item, kind=kind, found=bool(spans), spans=tuple(spans)))
        missing = [hit.item for hit in hits if hit.kind == "include" and not hit.found]
        present = [hit.item for hit in hits if hit.kind == "exclude" and hit.found]
        passed = not missing and not present
        reasons = []
        if missing:
            reasons.append("lacks " + _quoted(missing))
        if present:
            reasons.append("contains " + _quoted(present))
        reason = "passes its checks" if passed else "; ".join(reasons)
        return Verdict(passed=passed, rule="checks", hits=tuple(hits), reason=reason)
    if expected is not None:
        passed = _normalize_keep_case(answer) == _normalize_keep_case(expected)
        reason = "equals the expected answer" if passed else "differs from the expected answer"
        return Verdict(passed=passed, rule="exact", reason=reason)
    return Verdict(passed=None, rule="none", reason="no checks and no expected answer")


def describe_rule(
    *,
    expected: str | None = None,
    must_include: Sequence[str] | None = None,
    must_not_include: Sequence[str] | None = None,
) -> str:
    """The rule in words, as the model card and the job page state it."""
    if has_checks(must_include, must_not_include):
        parts = []
        if must_include:
            parts.append("contains " + _quoted(must_include, joiner=" and "))
        if must_not_include:
            parts.append("does not contain " + _quoted(must_not_include, joiner=" or "))
        return ", ".join(parts)
    if expected is not None:
        return "equals the expected answer (Unicode forms and spacing aside)"
    return "no rule: no checks and no expected answer"


def _quoted(items: Iterable[str], *, joiner: str = ", ") -> str:
    return joiner.join(item if is_pattern(item) else f"'{item}'" for item in items)


# ---------------------------------------------------------------------------- without text


def prefers_good_answer(margin_ref: float | None, margin_policy: float | None) -> bool | None:
    """The patched model prefers the chosen answer: its margin (chosen - rejected log-prob) is
    positive and has grown beyond the reference's. None when there is no pair."""
    if margin_ref is None or margin_policy is None:
        return None
    return margin_policy > 0 and margin_policy > margin_ref


DEFAULT_DRIFT_TOLERANCE = 0.1  # nats per token; docs/benchmarks.md says why


def within_tolerance(drift: float | None, tolerance: float) -> bool | None:
    """A regression answer's mean per-token log-prob moved by at most ``tolerance``."""
    if drift is None:
        return None
    return abs(drift) <= tolerance


def regression_changed(
    *,
    identical: bool,
    check: Verdict,
    drift: float | None,
    tolerance: float,
) -> bool:
    """A regression prompt changed only when its answer differs and it fails its checks (when
    it has checks), or else when its pre-patch answer drifted past the tolerance."""
    if identical:
        return False
    if check.rule == "checks":
        return not check.passed
    if drift is None:  # nothing measured: a different answer is all there is to go by
        return True
    return not within_tolerance(drift, tolerance)
