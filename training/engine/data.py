"""Reading pairs and eval prompts, and turning them into token ids the way TRL does.

Token convention (DESIGN.md): ``prompt_ids = tok(prompt).input_ids`` and
``completion_ids = tok(completion, add_special_tokens=False).input_ids + [eos]``. A
conversational prompt (a list of ``{"role", "content"}`` messages) is rendered with the
tokenizer's chat template and a generation prompt; a tokenizer without a template gets a plain
``role: content`` rendering so conversational files still work on tiny test models.

Long prompts keep their END (the question sits at the end of a long context); answers keep
their start. A pair whose answer would lose every token is refused with its line number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    text_key: str  # hash of the pair's text: the reference log-prob cache is keyed by it
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


def check_model_folder(path: str | Path) -> Path:
    """EngineError (one line) unless ``path`` looks like an HF model folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EngineError(f"model folder {folder} does not exist; pass a folder in HF format")
    if not (folder / "config.json").is_file():
        raise EngineError(f"model folder {folder} has no config.json; is it a Hugging Face model?")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot read {folder / 'config.json'}: {error}") from None
    if not isinstance(config, dict):
        raise EngineError(f"{folder / 'config.json'} is not a JSON object; is it a model config?")
    return folder


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
    """Validate eval records (``prompt``, ``kind``, optional ``expected``/``topic``/``tags``)."""
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
        items.append(
            EvalItem(
                line=record.get("line", index + 1),
                prompt=record["prompt"],
                kind=kind,
                expected=expected,
                topic=topic,
                tags=tags,
            )
        )
    return items


# ---------------------------------------------------------------------------- tokenizing


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The text the model sees before its answer; conversational prompts get the chat template."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 (templates raise what their authors chose)
            roles = "/".join(message["role"] for message in prompt)
            raise EngineError(
                f"the model's chat template refuses a prompt with roles {roles}: "
                f"{first_line(error)}"
            ) from None
    lines = [f"{message['role']}: {message['content']}" for message in prompt]
    return "\n".join(lines) + "\nassistant: "


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Prompt token ids: ``tok(prompt).input_ids``; a chat template already has its specials."""
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


def encode_completion(tokenizer: Any, completion: str | list[dict[str, str]]) -> list[int]:
    """``tok(completion, add_special_tokens=False).input_ids + [eos]`` (TRL's convention)."""
    ids = tokenizer(completion_text(completion), add_special_tokens=False).input_ids
    return list(ids) + [tokenizer.eos_token_id]


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
        prompt_ids = encode_prompt(tokenizer, pair["prompt"])
        if not prompt_ids:
            raise EngineError(
                f"{where}: the prompt encodes to no tokens (the tokenizer adds no BOS); "
                "give it some text"
            )
        chosen_ids = encode_completion(tokenizer, pair["chosen"])
        rejected_ids = encode_completion(tokenizer, pair["rejected"])
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
