"""Same model, same pairs, same batch: our loss and log-probs equal TRL DPOTrainer's."""

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


@pytest.mark.parametrize(
    ("loss", "label_smoothing"), [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.2)]
)
def test_loss_on_one_batch_equals_trl(
    tiny_model_dir: Path, tmp_path: Path, loss: str, label_smoothing: float
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(PAIRS),
        beta=0.1,
        loss_type=[loss],
        label_smoothing=label_smoothing,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
    )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        processing_class=tokenizer,
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
