"""Fixtures of the rounds tests: a tiny random Llama (built once per session), a project with
flagged cases, API tokens, and a worker whose artifacts land where the test looks."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "the refund window is thirty days for every order",
    "how long is the refund window for order",
    "shipping takes three days for every parcel",
    "how long does shipping take for parcel",
    "0123456789 ? .",
]


def build_printable_tiny_model(out_dir: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """A random-init 2-layer Llama whose byte-level BPE knows only the corpus's characters.

    A random model emits any token; with all 256 bytes in the vocabulary it emits control
    characters (NUL among them) that no real answer has. Keeping the alphabet to printable text
    makes its answers look like (nonsense) text, as a real model's do.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", fast.bos_token_id)]
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer Llama: it samples varied text in milliseconds."""
    return build_printable_tiny_model(tmp_path_factory.mktemp("rounds-tiny") / "tiny-llama")


@pytest.fixture
def artifact_root(tmp_path, settings) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.ARTIFACT_ROOT = root
    return root


@pytest.fixture
def base_model(settings, tiny_model) -> Path:
    settings.PATCHWISE_BASE_MODEL = str(tiny_model)
    return tiny_model


@pytest.fixture
def gpu_worker(start_worker, artifact_root, base_model, tmp_path):
    """start() -> a worker on both queues sharing the test's artifacts and base model."""

    def start(**env: str):
        return start_worker(
            queues="gpu,default",
            env={
                "ARTIFACT_ROOT": str(artifact_root),
                "PATCHWISE_CACHE_DIR": str(tmp_path / "refcache"),
                "PATCHWISE_BASE_MODEL": str(base_model),
                **env,
            },
        )

    return start


def token_for(user) -> str:
    from accounts.services import token_create

    return token_create(user=user, name="test")


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def make_flagged_project(*, slug: str = "shop", flagged: int = 4, heldout: int = 2, overlap=1):
    """Flagged training cases (each with the deployed model's bad answer) and held-out cases."""
    from annotate.services import case_create, project_create

    project = project_create(name=f"Shop {slug}", slug=slug, overlap=overlap)
    for index in range(flagged):
        case_create(
            project=project,
            prompt=f"how long is the refund window for order {index}?",
            response=f"the refund window is seven days for order {index}",
            split="train",
            source="test",
        )
    for index in range(heldout):
        case_create(
            project=project,
            prompt=f"how long does shipping take for parcel {index}?",
            response=f"shipping takes nine weeks for parcel {index}",
            split="heldout",
            source="test",
        )
    return project
