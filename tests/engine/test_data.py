"""Pairs and eval prompts become the token ids DESIGN.md promises, or a one-line refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from training.engine.data import (
    encode_completion,
    encode_pairs,
    encode_prompt,
    parse_eval_items,
    read_jsonl,
    validate_pairs,
)
from training.engine.errors import EngineError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def test_plain_pair_follows_trl_token_convention(tokenizer) -> None:
    pair = {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"}
    [encoded] = encode_pairs(tokenizer, [pair], max_length=512, max_prompt_length=256)
    assert encoded.prompt_ids == tokenizer("the refund window is").input_ids
    assert encoded.prompt_ids[0] == tokenizer.bos_token_id
    assert encoded.chosen_ids == (
        tokenizer(" thirty days", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    )
    assert encoded.rejected_ids[-1] == tokenizer.eos_token_id
    assert not encoded.truncated


def test_conversational_prompt_uses_the_chat_template(chat_tokenizer) -> None:
    messages = [{"role": "user", "content": "how long does shipping take?"}]
    ids = encode_prompt(chat_tokenizer, messages)
    text = chat_tokenizer.decode(ids)
    assert text == "<s><|user|>how long does shipping take?</s><|assistant|>"
    answer = [{"role": "assistant", "content": "three days"}]
    assert chat_tokenizer.decode(encode_completion(chat_tokenizer, answer)) == "three days</s>"


def test_conversational_prompt_without_template_still_renders(tokenizer) -> None:
    messages = [{"role": "user", "content": "how long does shipping take?"}]
    text = tokenizer.decode(encode_prompt(tokenizer, messages), skip_special_tokens=True)
    assert text == "user: how long does shipping take?\nassistant: "


def test_long_prompts_keep_their_end_and_are_counted(tokenizer) -> None:
    long_prompt = "support answers every ticket " * 20 + "the refund window is"
    pairs = [
        {"prompt": long_prompt, "chosen": " thirty days", "rejected": " two years"},
        {"prompt": "shipping is", "chosen": " free", "rejected": " slow"},
    ]
    encoded = encode_pairs(tokenizer, pairs, max_length=64, max_prompt_length=16)
    full = tokenizer(long_prompt).input_ids
    assert encoded[0].prompt_ids == full[-16:]
    assert tokenizer.decode(encoded[0].prompt_ids).endswith("the refund window is")
    assert [pair.truncated for pair in encoded] == [True, False]


def test_pair_without_room_for_its_answer_is_refused_with_its_line(tokenizer) -> None:
    pairs = [
        {"prompt": "shipping is", "chosen": " free", "rejected": " slow", "line": 1},
        {"prompt": "support answers " * 30, "chosen": " x", "rejected": " y", "line": 7},
    ]
    with pytest.raises(EngineError, match=r"pairs line 7: the prompt is \d+ tokens"):
        encode_pairs(tokenizer, pairs, max_length=32, max_prompt_length=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"prompt": "a", "chosen": "b"}\n', "line 1: missing field 'rejected'"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt":\n', "line 2: not valid JSON"),
        ('{"prompt": 3, "chosen": "b", "rejected": "c"}\n', "line 1: field 'prompt' must be"),
        ('["a", "b"]\n', "line 1: expected a JSON object"),
    ],
)
def test_malformed_pairs_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(EngineError, match=message):
        validate_pairs(read_jsonl(path, what="pairs"), source=str(path))


def test_eval_items_keep_kind_expected_and_topic() -> None:
    items = parse_eval_items(
        [
            {"prompt": "a", "kind": "flagged", "expected": "b", "line": 3},
            {"prompt": "c", "kind": "regression", "topic": "shipping", "tags": ["faq"]},
        ]
    )
    assert [(item.line, item.kind, item.expected, item.topic) for item in items] == [
        (3, "flagged", "b", None),
        (2, "regression", None, "shipping"),
    ]
    with pytest.raises(EngineError, match="eval line 1: field 'kind' must be one of"):
        parse_eval_items([{"prompt": "a", "kind": "other"}])
