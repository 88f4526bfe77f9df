"""Tiny models built on the CPU in a second, shared by the engine tests (session fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests.conftest import cached_demo_model

CORPUS = [
    "the refund window is thirty days for every order",
    "shipping is free above fifty euros and takes three days",
    "support answers every ticket within one business day",
    "the warranty covers parts and labour for two years",
    "user: assistant: system: hello what is how long does it take",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# Llama 3's shape: an assistant turn ends with its own token, which is not the tokenizer's eos.
EOT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_tokenizer(
    *, chat_template: bool = False, end_of_turn: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with a BOS on every prompt.

    ``end_of_turn``: a chat tokenizer as Llama 3's, whose template closes a turn with
    ``<|eot|>`` while its eos is ``<|end_of_text|>``.
    """
    bos, eos = ("<|begin_of_text|>", "<|end_of_text|>") if end_of_turn else ("<s>", "</s>")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [bos, eos, "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    specials += ["<|eot|>"] if end_of_turn else []
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        pad_token="<pad>",
    )
    # A BOS on every plain prompt, like Llama tokenizers.
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, fast.bos_token_id)]
    )
    if end_of_turn:
        fast.chat_template = EOT_CHAT_TEMPLATE
    elif chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: Path,
    *,
    chat_template: bool = False,
    end_of_turn: bool = False,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """A random-init Llama with the tiny tokenizer; with ``end_of_turn``, its generation config
    lists both eos and ``<|eot|>``, as Llama 3 Instruct's does."""
    fast = build_tiny_tokenizer(chat_template=chat_template, end_of_turn=end_of_turn)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=0.2,  # logits wide enough for a LoRA to make one answer likely
    )
    model = LlamaForCausalLM(config)
    if end_of_turn:
        model.generation_config.eos_token_id = [
            fast.eos_token_id,
            fast.convert_tokens_to_ids("<|eot|>"),
        ]
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_plain"))


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_chat"), chat_template=True)


@pytest.fixture(scope="session")
def eot_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_eot_chat"), end_of_turn=True)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    return cached_demo_model()
