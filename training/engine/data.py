"""Reading pairs and eval prompts, and turning them into token ids the way TRL does.

Token convention (DESIGN.md, as TRL 1.16's DPOTrainer):

- plain-string pairs: ``prompt_ids = tok(prompt).input_ids`` and
  ``completion_ids = tok(completion, add_special_tokens=False).input_ids + [eos]``;
- conversational pairs (the prompt is a list of ``{"role", "content"}`` messages): the chat
  template renders prompt + assistant turn, and the prompt alone with the generation prompt;
  the completion starts where the two token sequences diverge, and no eos is appended, so it
  ends with whatever the template closes a turn with (``<|eot_id|>``, ``<|im_end|>``...).

A tokenizer without a template gets a plain ``role: content`` rendering of the prompt and the
plain-string rule for the answer, so conversational files still work on tiny test models.

Long prompts keep their END (the question sits at the end of a long context); answers keep
their start. A pair whose answer would lose every token is refused with its line number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.engine.checks import FIELDS as CHECK_FIELDS
from training.engine.checks import CheckError, clean_checks
from training.engine.errors import EngineError, first_line

EVAL_KINDS = ("flagged", "heldout", "regression")

Prompt = str | list[dict[str, str]]


@dataclass
class EncodedPair:
    """One preference pair as token ids, with where it came from."""

    index: int  # position in the input list
    line: int  # line in the JSONL file (or index + 1 for pairs passed in memory)
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    text_key: str  # hash of the pair's text (not its position)
    truncated: bool = False


@dataclass
class EvalItem:
    """A prompt to answer greedily before and after training."""

    line: int
    prompt: Prompt
    kind: str  # flagged | heldout | regression
    expected: str | None = None
    topic: str | None = None  # optional grouping the report uses to say what regression covers
    tags: list[str] = field(default_factory=list)
    must_include: list[str] = field(default_factory=list)  # checks: see checks.py
    must_not_include: list[str] = field(default_factory=list)
    rejected: str | None = None  # the bad answer: the preference check weighs expected against it


# ---------------------------------------------------------------------------- reading files


def read_jsonl(path: str | Path, *, what: str) -> list[dict[str, Any]]:
    """Read a JSONL file into dicts, each with its ``line`` number; blank lines are skipped.

    ``what`` names the file in messages ("pairs", "eval").
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise EngineError(f"{what} file {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EngineError(f"cannot read {what} file {file}: {error}") from None
    records = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise EngineError(f"{file} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise EngineError(f"{file} line {number}: expected a JSON object, got {raw[:40]!r}")
        record["line"] = number
        records.append(record)
    if not records:
        raise EngineError(f"{what} file {file} is empty; it needs one JSON object per line")
    return records


# ---------------------------------------------------------------------------- validation


def _where(record: dict[str, Any], index: int, source: str) -> str:
    return f"{source} line {record.get('line', index + 1)}"


def _check_prompt(value: Any, where: str, name: str) -> None:
    if isinstance(value, str):
        if not value:
            raise EngineError(f"{where}: field '{name}' is empty")
        return
    if isinstance(value, list) and value:
        for message in value:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise EngineError(
                    f'{where}: field \'{name}\' must hold {{"role", "content"}} messages '
                    "with string values"
                )
        return
    raise EngineError(f"{where}: field '{name}' must be a string or a list of messages")


def validate_pairs(pairs: list[dict[str, Any]], *, source: str = "pairs") -> None:
    """Raise EngineError naming the first pair that lacks a usable prompt/chosen/rejected."""
    if not pairs:
        raise EngineError(f"{source}: no pairs to train on")
    for index, pair in enumerate(pairs):
        where = _where(pair, index, source)
        if not isinstance(pair, dict):
            raise EngineError(f"{where}: expected an object with prompt, chosen, rejected")
        for name in ("prompt", "chosen", "rejected"):
            if name not in pair:
                raise EngineError(f"{where}: missing field '{name}'")
            if name == "prompt":
                _check_prompt(pair[name], where, name)
            elif isinstance(pair[name], list):
                _check_prompt(pair[name], where, name)
            elif not isinstance(pair[name], str):
                raise EngineError(f"{where}: field '{name}' must be a string or a list of messages")


def parse_eval_items(records: list[dict[str, Any]], *, source: str = "eval") -> list[EvalItem]:
    """Validate eval records (``prompt``, ``kind``, optional ``expected``/``topic``/``tags``,
    the checks ``must_include``/``must_not_include`` and the bad answer ``rejected``)."""
    items = []
    for index, record in enumerate(records):
        where = _where(record, index, source)
        if not isinstance(record, dict):
            raise EngineError(f"{where}: expected an object with prompt and kind")
        if "prompt" not in record:
            raise EngineError(f"{where}: missing field 'prompt'")
        _check_prompt(record["prompt"], where, "prompt")
        kind = record.get("kind")
        if kind not in EVAL_KINDS:
            raise EngineError(f"{where}: field 'kind' must be one of {', '.join(EVAL_KINDS)}")
        expected = record.get("expected")
        if expected is not None and not isinstance(expected, str):
            raise EngineError(f"{where}: field 'expected' must be a string")
        tags = record.get("tags") or []
        if not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
            raise EngineError(f"{where}: field 'tags' must be a list of strings")
        topic = record.get("topic")
        if topic is not None and not isinstance(topic, str):
            raise EngineError(f"{where}: field 'topic' must be a string")
        rejected = record.get("rejected")
        if rejected is not None and not isinstance(rejected, str):
            raise EngineError(f"{where}: field 'rejected' must be a string")
        try:
            checks = {name: clean_checks(record.get(name), name=name) for name in CHECK_FIELDS}
        except CheckError as error:
            raise EngineError(f"{where}: {error}") from None
        items.append(
            EvalItem(
                line=record.get("line", index + 1),
                prompt=record["prompt"],
                kind=kind,
                expected=expected,
                topic=topic,
                tags=tags,
                rejected=rejected,
                **checks,
            )
        )
    return items


# ---------------------------------------------------------------------------- tokenizing

# Bumped whenever the convention above changes the ids of a pair: reference log-probs cached
# under another rule are then never reused. 2: conversational answers end with the template's
# end-of-turn, as TRL 1.16 (1 appended eos to every answer).
TOKENIZATION_RULE = 2


def is_conversational(prompt: Prompt) -> bool:
    return not isinstance(prompt, str)


def _uses_template(tokenizer: Any, prompt: Prompt) -> bool:
    return is_conversational(prompt) and bool(getattr(tokenizer, "chat_template", None))


def _apply_template(tokenizer: Any, messages: list[dict[str, str]], *, generation: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )
    except Exception as error:  # noqa: BLE001 (templates raise what their authors chose)
        roles = "/".join(message["role"] for message in messages)
        what = "a prompt" if generation else "a conversation"
        raise EngineError(
            f"the model's chat template refuses {what} with roles {roles}: {first_line(error)}"
        ) from None


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], *, generation: bool) -> list[int]:
    # what apply_chat_template(tokenize=True) does: the template writes its own special tokens
    text = _apply_template(tokenizer, messages, generation=generation)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The text the model sees before its answer; conversational prompts get the chat template."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return _apply_template(tokenizer, prompt, generation=True)
    lines = [f"{message['role']}: {message['content']}" for message in prompt]
    return "\n".join(lines) + "\nassistant: "


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The ids a model generates after: ``tok(prompt).input_ids``, or the template's rendering
    with the generation prompt (which already holds its special tokens)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt).input_ids)
    text = render_prompt(tokenizer, prompt)
    add_special = not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(text, add_special_tokens=add_special).input_ids)


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """The answer's text; a conversational answer is its messages' contents."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def _as_turn(completion: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A plain-string answer to a conversational prompt is that assistant turn's content."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return completion


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    length = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        length += 1
    return length


def encode_completions(
    tokenizer: Any, prompt: Prompt, completions: list[str | list[dict[str, str]]]
) -> tuple[list[int], list[list[int]]]:
    """The prompt's ids and each completion's ids, by the token convention (module docstring).

    With a chat template, the prompt is cut to what all the renderings share (a template may
    render the prompt alone differently, as TRL's DPOTrainer allows for): the prompt ids plus a
    completion's ids are then exactly the template's rendering of that conversation.
    """
    if not _uses_template(tokenizer, prompt):
        eos = tokenizer.eos_token_id
        prompt_ids = encode_prompt(tokenizer, prompt)
        answers = [
            list(tokenizer(completion_text(c), add_special_tokens=False).input_ids) + [eos]
            for c in completions
        ]
        return prompt_ids, answers
    prompt_ids = _template_ids(tokenizer, prompt, generation=True)
    full = [_template_ids(tokenizer, prompt + _as_turn(c), generation=False) for c in completions]
    shared = min((common_prefix_length(prompt_ids, ids) for ids in full), default=len(prompt_ids))
    return prompt_ids[:shared], [ids[shared:] for ids in full]


def turn_end_id(tokenizer: Any) -> int | None:
    """The token the chat template closes an assistant turn with (``<|eot_id|>``,
    ``<|im_end|>``, ``<end_of_turn>``), or None when there is no template or it closes a turn
    with ordinary text. Generation stops there, as servers that follow the template do."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "Patchwise-answer-7f3a"
    conversation = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": marker},
    ]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # noqa: BLE001 (a template that wants other roles: no end-of-turn known)
        return None
    if marker not in text:
        return None
    closing = text[text.rindex(marker) + len(marker) :]
    ids = tokenizer(closing, add_special_tokens=False).input_ids if closing else []
    added = tokenizer.added_tokens_decoder
    return next((token for token in ids if token in added), None)


def pair_text_key(pair: dict[str, Any]) -> str:
    """A hash of the pair's text (not its position), so reordered or re-exported pairs match."""
    payload = json.dumps(
        [pair["prompt"], pair["chosen"], pair["rejected"]], ensure_ascii=False, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def encode_pairs(
    tokenizer: Any,
    pairs: list[dict[str, Any]],
    *,
    max_length: int,
    max_prompt_length: int | None,
    source: str = "pairs",
) -> list[EncodedPair]:
    """Tokenize pairs; keep the end of prompts over ``max_prompt_length`` and the start of
    answers that overflow ``max_length`` (prompt + answer). Refuse pairs left without an answer.
    """
    validate_pairs(pairs, source=source)
    encoded = []
    for index, pair in enumerate(pairs):
        where = _where(pair, index, source)
        prompt_ids, (chosen_ids, rejected_ids) = encode_completions(
            tokenizer, pair["prompt"], [pair["chosen"], pair["rejected"]]
        )
        if not prompt_ids:
            raise EngineError(
                f"{where}: the prompt encodes to no tokens (the tokenizer adds no BOS); "
                "give it some text"
            )
        if not chosen_ids or not rejected_ids:
            raise EngineError(
                f"{where}: the chat template renders an answer as no tokens; "
                "check the template closes an assistant turn"
            )
        truncated = False
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            truncated = True
        room = max_length - len(prompt_ids)
        if room < 1:
            raise EngineError(
                f"{where}: the prompt is {len(prompt_ids)} tokens, which leaves no room for the "
                f"answer within max_length {max_length}; shorten the prompt or raise max_length"
            )
        if len(chosen_ids) > room or len(rejected_ids) > room:
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            truncated = True
        encoded.append(
            EncodedPair(
                index=index,
                line=pair.get("line", index + 1),
                prompt_ids=prompt_ids,
                chosen_ids=chosen_ids,
                rejected_ids=rejected_ids,
                text_key=pair_text_key(pair),
                truncated=truncated,
            )
        )
    return encoded
