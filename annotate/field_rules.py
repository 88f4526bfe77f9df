"""The rules every way in applies to a case's fields: the API, the forms and the file import.

Each `clean_*` returns the value as it is stored or raises InvalidValue naming the field and what
is wrong, so a user sees the same message whichever way the value came in.
"""

import math
from typing import Any

from training.engine.checks import CheckError, clean_checks, parse_checks_cell

MAX_TEXT_CHARS = 100_000
MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_SHORT_CHARS = 200  # trace_id, topic
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "heldout", "regression")


class InvalidValue(ValueError):
    """One field's value is unusable; the message says which field and why."""


def clean_prompt(value: Any) -> str | list[dict[str, str]]:
    """A prompt as stored: a non-empty string, or a list of role/content messages."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidValue("prompt is empty")
        _check_length("prompt", value)
        return value
    if not isinstance(value, list) or not value:
        raise InvalidValue("prompt must be a string or a non-empty list of {role, content}")
    messages = []
    for index, message in enumerate(value):
        where = f"prompt message {index + 1}"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InvalidValue(f"{where} must be an object with exactly 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InvalidValue(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
        if role == "system" and index != 0:
            raise InvalidValue(f"{where}: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise InvalidValue(f"{where}: content must be a non-empty string")
        _check_storable(where, content)
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise InvalidValue("prompt: the last message must be from the user (the answer follows it)")
    _check_length("prompt", "".join(m["content"] for m in messages))
    return messages


def clean_text(name: str, value: Any) -> str:
    """A response text; TRL's conversational form (one assistant message) is accepted too."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") == "assistant" and set(value[0]) == {"role", "content"}:
            value = value[0]["content"]
    if not isinstance(value, str):
        raise InvalidValue(f"{name} must be a string")
    if not value.strip():
        raise InvalidValue(f"{name} is empty")
    _check_length(name, value)
    return value


def clean_split(value: Any) -> str:
    if value not in SPLITS:
        raise InvalidValue(f"split must be one of {', '.join(SPLITS)}, not {value!r}")
    return value


def clean_tags(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [tag.strip() for tag in value.split(",") if tag.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(tag, str) for tag in value):
        raise InvalidValue("tags must be a list of strings")
    if len(value) > MAX_TAGS:
        raise InvalidValue(f"at most {MAX_TAGS} tags, not {len(value)}")
    for tag in value:
        if len(tag) > MAX_TAG_CHARS:
            raise InvalidValue(f"tag {tag[:20]!r}… is longer than {MAX_TAG_CHARS} characters")
        _check_storable("a tag", tag)
    return list(value)


def clean_short(name: str, value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidValue(f"{name} must be a string, not {value}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidValue(f"{name} must be a string")
    if len(value) > MAX_SHORT_CHARS:
        raise InvalidValue(f"{name} is longer than {MAX_SHORT_CHARS} characters")
    _check_storable(name, value)
    return value


def clean_check_items(name: str, value: Any) -> list[str]:
    """must_include / must_not_include as stored (training/engine/checks.py's rule); an invalid
    regex names its field, its item and the reason."""
    try:
        return clean_checks(value, name=name)
    except CheckError as exc:
        raise InvalidValue(str(exc)) from None


def checks_cell(name: str, cell: str) -> Any:
    """A CSV cell or a text box of checks: a JSON list, or one phrase per line."""
    try:
        return parse_checks_cell(cell)
    except CheckError as exc:
        raise InvalidValue(f"{name} {exc}") from None


def _check_length(name: str, text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidValue(
            f"{name} has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,} per field"
        )
    _check_storable(name, text)


def _check_storable(name: str, text: str) -> None:
    """Refuse what PostgreSQL cannot store in text or jsonb: NUL and unpaired surrogates."""
    if "\x00" in text:
        raise InvalidValue(f"{name} contains a NUL character (\\u0000), which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValue(
            f"{name} contains an unpaired UTF-16 surrogate ({text[exc.start]!r} at character "
            f"{exc.start + 1}), which is not text"
        ) from None
