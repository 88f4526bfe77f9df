"""The launch form's plan counts tokens as the worker will, chat template included."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.engine.conftest import build_tiny_model
from training.engine.data import encode_pairs, encode_prompt
from training.memory_plan import longest_in_tokens

SYSTEM = "You answer for the outdoor shop; quote the policy, never guess a date or a price."
CONVERSATIONS = [
    {
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "how long is the refund window for boots?"},
        ],
        "chosen": [{"role": "assistant", "content": "thirty days from delivery"}],
        "rejected": [{"role": "assistant", "content": "two years"}],
    },
    {
        "prompt": [{"role": "user", "content": "does shipping cost anything?"}],
        "chosen": "shipping is free above fifty euros",  # a plain answer to a conversation
        "rejected": [{"role": "assistant", "content": "three days"}],
    },
]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("chat"), chat_template=True, end_of_turn=True)


def test_conversations_are_counted_through_the_chat_template(chat_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    encoded = encode_pairs(tokenizer, CONVERSATIONS, max_length=4096, max_prompt_length=4096)
    question = [{"role": "system", "content": SYSTEM * 2}, {"role": "user", "content": "hi"}]
    worker_prompt = max(
        [len(pair.prompt_ids) for pair in encoded] + [len(encode_prompt(tokenizer, question))]
    )
    worker_answer = max(
        len(ids) for pair in encoded for ids in (pair.chosen_ids, pair.rejected_ids)
    )

    planned = longest_in_tokens(str(chat_model), CONVERSATIONS, [{"prompt": question}])

    assert planned == (worker_prompt, worker_answer)
    # the role headers and turn ends are what the text alone misses
    text_only = len(tokenizer(SYSTEM * 2 + "\nhi", add_special_tokens=False).input_ids) + 1
    assert worker_prompt > text_only


def test_plain_prompts_and_folders_without_a_template_are_still_counted(
    chat_model: Path, tmp_path: Path
) -> None:
    plain = [{"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two"}]
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    (encoded,) = encode_pairs(tokenizer, plain, max_length=512, max_prompt_length=512)
    assert longest_in_tokens(str(chat_model), plain, []) == (
        len(encoded.prompt_ids),
        len(encoded.chosen_ids),
    )
    # no tokenizer at all: three characters a token, rounded up, never zero
    assert longest_in_tokens(str(tmp_path), CONVERSATIONS, [])[0] >= len(SYSTEM) // 3
