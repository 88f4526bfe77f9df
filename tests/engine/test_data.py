"""Pairs and eval prompts become the token ids DESIGN.md promises, or a one-line refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.engine.conftest import build_tiny_tokenizer
from training.engine.data import (
    encode_completions,
    encode_pairs,
    encode_prompt,
    parse_eval_items,
    read_jsonl,
    turn_end_id,
    validate_pairs,
)
from training.engine.errors import EngineError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


@pytest.fixture(scope="module")
def eot_tokenizer(eot_chat_model_dir: Path):
    return AutoTokenizer.from_pretrained(eot_chat_model_dir)


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
    prompt_ids, [answer_ids] = encode_completions(chat_tokenizer, messages, [answer])
    assert prompt_ids == ids  # this template renders the prompt alone as it does before an answer
    assert chat_tokenizer.decode(answer_ids) == "three days</s>"  # its turns close with eos


def test_chat_answers_end_with_the_templates_end_of_turn_not_eos(eot_tokenizer) -> None:
    messages = [{"role": "user", "content": "how long does shipping take?"}]
    pairs = [
        {
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": "three days"}],
            "rejected": "two years",  # a plain string answering messages: that turn's content
        },
        {"prompt": "shipping takes", "chosen": " three days", "rejected": " two years"},
    ]
    chat, plain = encode_pairs(eot_tokenizer, pairs, max_length=512, max_prompt_length=256)
    assert eot_tokenizer.decode(chat.prompt_ids) == (
        "<|begin_of_text|><|user|>how long does shipping take?<|eot|><|assistant|>"
    )
    assert eot_tokenizer.decode(chat.chosen_ids) == "three days<|eot|>"
    assert eot_tokenizer.decode(chat.rejected_ids) == "two years<|eot|>"
    whole = messages + [{"role": "assistant", "content": "three days"}]
    rendered = eot_tokenizer.apply_chat_template(whole, tokenize=False)
    assert (
        chat.prompt_ids + chat.chosen_ids
        == eot_tokenizer(rendered, add_special_tokens=False).input_ids
    )
    # plain pairs keep TRL's plain rule on the same tokenizer: the answer ends with eos
    assert plain.chosen_ids[-1] == eot_tokenizer.eos_token_id
    assert eot_tokenizer.decode(plain.chosen_ids) == " three days<|end_of_text|>"


def test_the_prompt_is_cut_where_a_template_renders_it_differently(eot_tokenizer) -> None:
    # like templates that end the generation prompt with a block the full conversation drops
    eot_tokenizer = eot_tokenizer.__class__.from_pretrained(eot_tokenizer.name_or_path)
    eot_tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|><|system|>{% endif %}"
    )
    messages = [{"role": "user", "content": "hello"}]
    pair = {"prompt": messages, "chosen": "three days", "rejected": "two years"}
    [encoded] = encode_pairs(eot_tokenizer, [pair], max_length=512, max_prompt_length=256)
    assert eot_tokenizer.decode(encoded.prompt_ids) == "<|user|>hello<|eot|><|assistant|>"
    assert eot_tokenizer.decode(encoded.chosen_ids) == "three days<|eot|>"
    assert eot_tokenizer.decode(encode_prompt(eot_tokenizer, messages)).endswith("<|system|>")


@pytest.mark.parametrize(
    ("template", "end"),
    [
        ("eot", "<|eot|>"),  # Llama 3's shape
        ("{% for m in messages %}{{ m['content'] }}<|eot|>\n{% endfor %}", "<|eot|>"),  # Qwen's
        ("{% for m in messages %}{{ m['content'] }}\n<|eot|>{% endfor %}", "<|eot|>"),
        ("{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}", "</s>"),
        ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}", None),
        (None, None),
    ],
)
def test_the_templates_end_of_turn_token_is_found(template: str | None, end: str | None) -> None:
    tokenizer = build_tiny_tokenizer(end_of_turn=template == "eot")
    if template != "eot":
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot|>"]})
        tokenizer.chat_template = template
    expected = tokenizer.convert_tokens_to_ids(end) if end else None
    assert turn_end_id(tokenizer) == expected


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
