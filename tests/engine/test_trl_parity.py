"""Same model, same pairs, same batch: our tokens, loss and log-probs equal TRL DPOTrainer's,
for plain pairs and for conversational ones rendered through a chat template."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.engine.data import encode_pairs
from training.engine.logprobs import pair_logps_shared
from training.engine.losses import preference_losses

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PAIRS = [
    {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"},
    {"prompt": "shipping is free above", "chosen": " fifty euros", "rejected": " three days"},
    {"prompt": "the warranty covers", "chosen": " parts and labour", "rejected": " nothing"},
]


CHAT_PAIRS = [
    {
        "prompt": [{"role": "user", "content": "how long does shipping take?"}],
        "chosen": [{"role": "assistant", "content": "three days"}],
        "rejected": [{"role": "assistant", "content": "two years"}],
    },
    {
        "prompt": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "the refund window is"},
        ],
        "chosen": [{"role": "assistant", "content": "thirty days for every order"}],
        "rejected": [{"role": "assistant", "content": "two years"}],
    },
]


def _models(model_dir: Path):
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return policy, reference


def _trl_trainer(policy, reference, tokenizer, pairs, out: Path, **options):
    args = trl.DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=len(pairs),
        beta=0.1,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
        **options,
    )
    return trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(pairs),
        processing_class=tokenizer,
    )


@pytest.mark.parametrize(
    ("loss", "label_smoothing"), [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.2)]
)
def test_loss_on_one_batch_equals_trl(
    tiny_model_dir: Path, tmp_path: Path, loss: str, label_smoothing: float
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy, reference = _models(tiny_model_dir)
    trainer = _trl_trainer(
        policy,
        reference,
        tokenizer,
        PAIRS,
        tmp_path,
        loss_type=[loss],
        label_smoothing=label_smoothing,
    )
    batch = next(iter(trainer.get_train_dataloader()))  # all pairs: order does not matter
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()

    encoded = encode_pairs(tokenizer, PAIRS, max_length=1024, max_prompt_length=512)
    with torch.no_grad():
        ours = pair_logps_shared(policy, encoded, pad_id=tokenizer.pad_token_id)
        ref = pair_logps_shared(reference, encoded, pad_id=tokenizer.pad_token_id)
    our_loss = preference_losses(
        ours.chosen,
        ours.rejected,
        ref.chosen,
        ref.rejected,
        loss=loss,
        beta=0.1,
        label_smoothing=label_smoothing,
        chosen_tokens=ours.chosen_tokens,
        rejected_tokens=ours.rejected_tokens,
    ).mean()
    assert our_loss.item() == pytest.approx(trl_loss, rel=1e-4, abs=1e-5)
    trl_metrics = trainer._metrics["eval"]
    assert ours.chosen.mean().item() == pytest.approx(trl_metrics["logps/chosen"][-1], abs=1e-4)
    assert ours.rejected.mean().item() == pytest.approx(trl_metrics["logps/rejected"][-1], abs=1e-4)


def test_conversational_batch_equals_trl_and_ends_with_the_end_of_turn(
    eot_chat_model_dir: Path, tmp_path: Path
) -> None:
    # the template closes a turn with <|eot|>; the tokenizer's eos is <|end_of_text|>
    tokenizer = AutoTokenizer.from_pretrained(eot_chat_model_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|eot|>")
    policy, reference = _models(eot_chat_model_dir)
    trainer = _trl_trainer(policy, reference, tokenizer, CHAT_PAIRS, tmp_path)
    encoded = encode_pairs(tokenizer, CHAT_PAIRS, max_length=1024, max_prompt_length=512)
    for theirs, ours in zip(trainer.train_dataset, encoded, strict=True):
        assert ours.prompt_ids == theirs["prompt_ids"]
        assert ours.chosen_ids == theirs["chosen_ids"]
        assert ours.rejected_ids == theirs["rejected_ids"]
        assert ours.chosen_ids[-1] == ours.rejected_ids[-1] == end_of_turn
        assert tokenizer.eos_token_id not in ours.chosen_ids + ours.rejected_ids

    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
        ours = pair_logps_shared(policy, encoded, pad_id=tokenizer.pad_token_id)
        ref = pair_logps_shared(reference, encoded, pad_id=tokenizer.pad_token_id)
    our_loss = preference_losses(
        ours.chosen, ours.rejected, ref.chosen, ref.rejected, loss="sigmoid", beta=0.1
    ).mean()
    assert our_loss.item() == pytest.approx(trl_loss, rel=1e-4, abs=1e-5)
    trl_metrics = trainer._metrics["eval"]
    assert ours.chosen.mean().item() == pytest.approx(trl_metrics["logps/chosen"][-1], abs=1e-4)
    assert ours.rejected.mean().item() == pytest.approx(trl_metrics["logps/rejected"][-1], abs=1e-4)
